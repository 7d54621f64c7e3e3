//! TypeScript typings of the API description (`docs/api/butlerd.d.ts`): an interface per params,
//! result, notification and shared type, and maps from method names to them (`Methods`,
//! `Notifications`, `ClientRequests`) for a typed `call`.

use std::fmt::Write;

use serde_json::{Map, Value};

use super::{pascal, ref_name};

/// The type expression for `schema`.
pub(super) fn ts_type(schema: &Value) -> String {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return ref_name(r).to_owned();
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return union(values.iter().map(Value::to_string).collect());
    }
    if let Some(c) = schema.get("const") {
        return c.to_string();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(variants) = schema.get(key).and_then(Value::as_array) {
            return union(variants.iter().map(ts_type).collect());
        }
    }
    match schema.get("type") {
        Some(Value::Array(types)) => {
            union(types.iter().filter_map(Value::as_str).map(|t| of_type(t, schema)).collect())
        }
        Some(Value::String(t)) => of_type(t, schema),
        _ if schema.get("properties").is_some() => of_type("object", schema),
        _ => "unknown".to_owned(),
    }
}

fn of_type(t: &str, schema: &Value) -> String {
    match t {
        "string" => "string".into(),
        "integer" | "number" => "number".into(),
        "boolean" => "boolean".into(),
        "null" => "null".into(),
        "array" => {
            let item = schema.get("items").map_or("unknown".into(), ts_type);
            if item.contains(' ') { format!("({item})[]") } else { format!("{item}[]") }
        }
        _ => match schema.get("properties").and_then(Value::as_object) {
            Some(props) if !props.is_empty() => {
                let mut s = String::from("{ ");
                for (name, p) in props {
                    let opt = if required(schema).contains(&name.as_str()) { "" } else { "?" };
                    let _ = write!(s, "{name}{opt}: {}; ", ts_type(p));
                }
                s.push('}');
                s
            }
            _ => match schema.get("additionalProperties") {
                Some(v @ Value::Object(_)) => format!("{{ [key: string]: {} }}", ts_type(v)),
                _ => "{ [key: string]: unknown }".into(),
            },
        },
    }
}

fn union(mut parts: Vec<String>) -> String {
    parts.dedup();
    parts.join(" | ")
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn doc_comment(out: &mut String, indent: &str, text: Option<&str>) {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return };
    let _ = writeln!(out, "{indent}/**");
    for line in text.lines() {
        let _ = writeln!(out, "{indent} * {}", line.replace("*/", "*\\/"));
    }
    let _ = writeln!(out, "{indent} */");
}

/// `export interface Name { ... }` for an object, `export type Name = ...` for anything else.
fn declare(out: &mut String, name: &str, schema: &Value) {
    doc_comment(out, "", schema.get("description").and_then(Value::as_str));
    let props = schema.get("properties").and_then(Value::as_object);
    let is_object = schema.get("type").and_then(Value::as_str) == Some("object")
        && schema.get("additionalProperties").is_none_or(|a| a == false);
    match props {
        Some(props) => {
            let _ = writeln!(out, "export interface {name} {{");
            let req = required(schema);
            for (field, p) in props {
                doc_comment(out, "  ", p.get("description").and_then(Value::as_str));
                let opt = if req.contains(&field.as_str()) { "" } else { "?" };
                let _ = writeln!(out, "  {field}{opt}: {};", ts_type(p));
            }
            let _ = writeln!(out, "}}\n");
        }
        None if is_object => {
            let _ = writeln!(out, "export interface {name} {{}}\n");
        }
        None => {
            let _ = writeln!(out, "export type {name} = {};\n", ts_type(schema));
        }
    }
}

/// The whole `butlerd.d.ts`.
pub(super) fn render(doc: &Value) -> String {
    let mut out = String::from(
        "// butler daemon API typings, generated from the daemon's code by `butler api-docs`\n\
         // (`make api-docs`); do not edit. Method and notification names and shapes that\n\
         // upstream butlerd also has keep upstream's spelling.\n\n",
    );
    let none = Map::new();
    let methods = doc["methods"].as_array().map_or(&[][..], Vec::as_slice);
    let mut map =
        String::from("/** Every method: its params and result. */\nexport interface Methods {\n");
    for m in methods {
        let name = m["name"].as_str().unwrap_or_default();
        let base = pascal(name);
        let _ = writeln!(out, "// ---- {name}\n");
        let params = params_schema(m);
        declare(&mut out, &format!("{base}Params"), &params);
        let mut result = m["result"]["schema"].clone();
        if result.get("description").is_none() {
            result["description"] = m["description"].clone();
        }
        declare(&mut out, &format!("{base}Result"), &result);
        let _ = writeln!(map, "  {:?}: {{ params: {base}Params; result: {base}Result }};", name);
    }
    map.push_str("}\n\n");
    out.push_str("// ---- Notifications the daemon sends\n\n");
    let mut nmap = String::from(
        "/** Every notification the daemon sends: its params. */\nexport interface Notifications {\n",
    );
    for n in doc["x-notifications"].as_array().map_or(&[][..], Vec::as_slice) {
        let name = n["name"].as_str().unwrap_or_default();
        let ty = format!("{}Notification", pascal(name));
        declare(&mut out, &ty, &n["params"]);
        let _ = writeln!(nmap, "  {name:?}: {ty};");
    }
    nmap.push_str("}\n\n");
    out.push_str("// ---- Requests the daemon sends the client\n\n");
    let mut rmap = String::from(
        "/** Every request the daemon may send the client: its params and the result it expects. */\n\
         export interface ClientRequests {\n",
    );
    for r in doc["x-server-requests"].as_array().map_or(&[][..], Vec::as_slice) {
        let name = r["name"].as_str().unwrap_or_default();
        let base = format!("Client{}", pascal(name));
        declare(&mut out, &format!("{base}Params"), &r["params"]);
        declare(&mut out, &format!("{base}Result"), &r["result"]);
        let _ = writeln!(rmap, "  {name:?}: {{ params: {base}Params; result: {base}Result }};");
    }
    rmap.push_str("}\n\n");
    out.push_str("// ---- Shared types\n\n");
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap_or(&none) {
        declare(&mut out, name, schema);
    }
    out.push_str(&map);
    out.push_str(&nmap);
    out.push_str(&rmap);
    out.push_str("/** Every error code the daemon answers with. */\nexport type ErrorCode =\n");
    for c in doc["x-error-codes"].as_array().map_or(&[][..], Vec::as_slice) {
        let _ = writeln!(out, "  | {} // {}", c["code"], c["name"].as_str().unwrap_or_default());
    }
    out.push_str("  ;\n\n/** An error reply's `error`. `data.butlerVersion` is always there. */\n");
    out.push_str(
        "export interface RpcError {\n  code: ErrorCode;\n  message: string;\n  \
         data: { butlerVersion: string; field?: string; [key: string]: unknown };\n}\n",
    );
    out
}

/// The params object again, from OpenRPC's by-name content descriptors.
pub(super) fn params_schema(method: &Value) -> Value {
    let mut props = Map::new();
    let mut req = Vec::new();
    for p in method["params"].as_array().map_or(&[][..], Vec::as_slice) {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        if p["required"] == true {
            req.push(Value::from(name.clone()));
        }
        props.insert(name, p["schema"].clone());
    }
    let mut schema = Map::new();
    schema.insert("type".into(), "object".into());
    if !props.is_empty() {
        schema.insert("properties".into(), Value::Object(props));
        schema.insert("required".into(), Value::Array(req));
    }
    Value::Object(schema)
}
