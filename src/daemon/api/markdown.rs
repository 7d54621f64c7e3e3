//! The readable reference (`docs/api/README.md`): the conventions, then one section per method
//! with its params, result, what it may send, its errors and an example exchange, then the
//! notifications, the client requests, the error codes and the shared types.

use std::fmt::Write;

use serde_json::{Map, Value, json};

use super::sample;
use super::typescript::{params_schema, ts_type};

const INTRO: &str = "\
# The butler daemon's API

Generated from the daemon's code by `butler api-docs` (`make api-docs`); do not edit. The same
description is [`butlerd.openrpc.json`](butlerd.openrpc.json) (OpenRPC 1.2.6, also answered by
`rpc.discover`) and [`butlerd.d.ts`](butlerd.d.ts) (TypeScript typings). A test fails when
these files differ from what the code generates.

## Conventions

- **Framing**: one JSON-RPC 2.0 message per line (`\\n`), UTF-8, both ways. Batches are answered
  with an array. Ids may be numbers or strings and are echoed exactly.
- **Transports**: loopback TCP (the default), an owner-only unix socket (`--transport
  unix:<path>`), an owner-only named pipe on Windows (`--transport net.pipe:<name>`), or stdio.
  The listen notification on stdout gives the address and the secret.
- **Authentication**: on every transport but stdio, `Meta.Authenticate` with the secret comes
  first; anything else is refused (-32600) until then, `rpc.discover` included.
- **Params**: missing `params` means `{}`. Unknown fields are accepted and ignored, as upstream
  butlerd does, so a newer client may send fields an older daemon does not know. A param that
  does not fit is -32602, with `data.field` naming it.
- **Cancellation**: closing a connection cancels everything running on it. A request whose
  params carry a string `id` can also be cancelled from any connection with `Operation.Cancel`;
  it then fails with 499.
- **Notifications** go to the connection of the request that caused them; daemon-wide news goes
  to `Meta.Flow` connections. **Requests to the client** use the caller's connection and the
  daemon's own ids (from 0).
- **Versions**: every version in a result or notification is plain semver (`0.1.0`), as the
  update server names builds and as `Update.Apply` takes them, except `Version.Get`'s, which
  keeps upstream's spelling (`v0.1.0` and a `versionString`) for the clients that read it.
  `data.butlerVersion` in errors is upstream's field and spelling (`v0.1.0`).
- **Errors**: `{code, message, data}`; `data.butlerVersion` is always there. Every method may
  answer with JSON-RPC's own codes (-32700 to -32603); the application codes it may use are
  listed with it. See [Error codes](#error-codes).
";

fn anchor(name: &str) -> String {
    name.to_lowercase().chars().filter(|c| c.is_alphanumeric() || *c == '-').collect()
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A table of an object schema's fields.
fn fields(out: &mut String, schema: &Value) {
    let props = schema.get("properties").and_then(Value::as_object);
    let Some(props) = props.filter(|p| !p.is_empty()) else {
        out.push_str("`{}`\n\n");
        return;
    };
    let req: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| field | type | | description |\n|---|---|---|---|\n");
    for (name, p) in props {
        let needed = if req.contains(&name.as_str()) { "required" } else { "optional" };
        let desc = p.get("description").and_then(Value::as_str).unwrap_or("");
        let _ = writeln!(out, "| `{name}` | `{}` | {needed} | {} |", cell(&ts_type(p)), cell(desc));
    }
    out.push('\n');
}

fn line(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The whole README.
pub(super) fn render(doc: &Value) -> String {
    let none = Map::new();
    let defs = doc["components"]["schemas"].as_object().unwrap_or(&none);
    let mut out = String::from(INTRO);
    let _ = writeln!(
        out,
        "\nProtocol version {} (`Meta.Capabilities`' `protocolVersion`, `rpc.discover`'s \
         `info.x-protocol-version`).\n",
        doc["info"]["x-protocol-version"]
    );
    out.push_str("## Methods\n\n");
    let methods = doc["methods"].as_array().map_or(&[][..], Vec::as_slice);
    for m in methods {
        let name = m["name"].as_str().unwrap_or_default();
        let _ = writeln!(out, "- [`{name}`](#{})", anchor(name));
    }
    out.push('\n');
    for (i, m) in methods.iter().enumerate() {
        let name = m["name"].as_str().unwrap_or_default();
        let _ = writeln!(out, "### {name}\n\n{}\n", m["description"].as_str().unwrap_or(""));
        let params = params_schema(m);
        out.push_str("**Params**\n\n");
        fields(&mut out, &params);
        let result = &m["result"]["schema"];
        out.push_str("**Result**\n\n");
        if m["x-answered-by-connection"] == true && name == "Meta.Flow" {
            out.push_str("Never answered while the daemon runs.\n\n");
        } else {
            fields(&mut out, result);
        }
        let names = |key: &str| -> Vec<String> {
            m[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|n| format!("[`{n}`](#{})", anchor(n)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let sends = names("x-notifications");
        if !sends.is_empty() {
            let _ = writeln!(out, "**May send**: {}\n", sends.join(", "));
        }
        let asks = names("x-server-requests");
        if !asks.is_empty() {
            let _ = writeln!(out, "**Asks the client**: {}\n", asks.join(", "));
        }
        if let Some(errors) = m["errors"].as_array() {
            let codes: Vec<String> = errors.iter().map(|e| format!("`{}`", e["code"])).collect();
            let _ = writeln!(out, "**Errors** besides JSON-RPC's: {}\n", codes.join(", "));
        }
        let id = i + 1;
        let request = json!({
            "jsonrpc": "2.0", "id": id, "method": name, "params": sample(&params, defs, false, 0),
        });
        out.push_str("```\n");
        let _ = writeln!(out, "--> {}", line(&request));
        if name != "Meta.Flow" {
            let reply =
                json!({ "jsonrpc": "2.0", "id": id, "result": sample(result, defs, true, 0) });
            let _ = writeln!(out, "<-- {}", line(&reply));
        } else {
            let _ = writeln!(
                out,
                "<-- {}",
                line(
                    &json!({"jsonrpc": "2.0", "method": "MetaFlowEstablished", "params": {"pid": 4242}})
                )
            );
        }
        out.push_str("```\n\n");
    }
    out.push_str("## Notifications\n\nSent by the daemon, never answered.\n\n");
    for n in doc["x-notifications"].as_array().map_or(&[][..], Vec::as_slice) {
        let name = n["name"].as_str().unwrap_or_default();
        let _ = writeln!(out, "### {name}\n\n{}\n", n["description"].as_str().unwrap_or(""));
        fields(&mut out, &n["params"]);
        let msg = json!({ "jsonrpc": "2.0", "method": name, "params": sample(&n["params"], defs, true, 0) });
        let _ = writeln!(out, "```\n<-- {}\n```\n", line(&msg));
    }
    out.push_str("## Requests to the client\n\nThe client answers them like any request.\n\n");
    for r in doc["x-server-requests"].as_array().map_or(&[][..], Vec::as_slice) {
        let name = r["name"].as_str().unwrap_or_default();
        let _ = writeln!(out, "### {name}\n\n{}\n", r["description"].as_str().unwrap_or(""));
        out.push_str("**Params**\n\n");
        fields(&mut out, &r["params"]);
        out.push_str("**Result**\n\n");
        fields(&mut out, &r["result"]);
    }
    out.push_str("## Error codes\n\n| code | name | meaning |\n|---|---|---|\n");
    for c in doc["x-error-codes"].as_array().map_or(&[][..], Vec::as_slice) {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            c["code"],
            c["name"].as_str().unwrap_or_default(),
            cell(c["message"].as_str().unwrap_or_default())
        );
    }
    out.push_str("\n## Types\n\n");
    for (name, schema) in defs {
        let _ = writeln!(out, "### {name}\n");
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{d}\n");
        }
        if schema.get("properties").is_some() {
            fields(&mut out, schema);
        } else {
            let _ = writeln!(out, "`{}`\n", cell(&ts_type(schema)));
        }
    }
    out
}
