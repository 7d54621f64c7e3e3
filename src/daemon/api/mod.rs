//! The daemon's API description, generated from the code: the method table's registrations
//! (what each method does, may send and may answer with) and the JSON Schemas `schemars` derives
//! from the param, result and notification types, as one OpenRPC 1.2.6 document. `rpc.discover`
//! answers it; `butler api-docs` writes it to `docs/api/` with its two renderings, a readable
//! reference (`markdown.rs`) and TypeScript typings (`typescript.rs`).
//!
//! OpenRPC has no place for what a server sends unasked, so the document carries extensions:
//! `x-notifications` and `x-server-requests` (top level: every one, with its schema; per method:
//! the names it may send), and `x-error-codes` (every code; per method, `errors` lists the
//! application codes it may answer with besides JSON-RPC's own).

mod markdown;
mod typescript;

use std::collections::BTreeMap;
use std::path::Path;

use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, SchemaGenerator};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::jsonrpc::code;
use super::router::{Router, SchemaFn};
use super::state::Daemon;

/// Where type definitions live in the document.
const DEFS: &str = "#/components/schemas/";

/// The three files `docs/api/` holds, by name, as this build generates them.
pub(crate) fn files() -> Vec<(&'static str, String)> {
    let router = super::methods::router();
    let doc = router.openrpc();
    let mut json = serde_json::to_string_pretty(doc).unwrap_or_default();
    json.push('\n');
    vec![
        ("butlerd.openrpc.json", json),
        ("README.md", markdown::render(doc)),
        ("butlerd.d.ts", typescript::render(doc)),
    ]
}

/// Writes [`files`] into `dir`.
pub(crate) fn write_files(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in files() {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// `rpc.discover`'s answer: the document, plus the running build's version (left out of the
/// committed file so it does not change with every release).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct Document(Value);

impl Document {
    pub(crate) fn of_daemon(daemon: &Daemon) -> Document {
        let mut doc = daemon.router.openrpc().clone();
        doc["info"]["x-butler-version"] = Value::from(crate::version::VERSION);
        Document(doc)
    }
}

impl JsonSchema for Document {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OpenrpcDocument".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "An OpenRPC 1.2.6 document (https://spec.open-rpc.org), this one.",
            "additionalProperties": true,
        })
    }
}

/// Collects schemas: params are read by the daemon (their `#[serde(default)]` fields are
/// optional), results and notifications written by it (every field it always writes is
/// required), so each side has its generator; their definitions meet in one table.
struct Schemas {
    read: SchemaGenerator,
    written: SchemaGenerator,
}

impl Schemas {
    fn new() -> Self {
        let settings = |contract| {
            SchemaSettings::draft07().with(|s| {
                s.definitions_path = DEFS.into();
                s.contract = contract;
            })
        };
        Schemas {
            read: settings(Contract::Deserialize).into_generator(),
            written: settings(Contract::Serialize).into_generator(),
        }
    }

    fn read(&mut self, f: SchemaFn) -> Value {
        f(&mut self.read).to_value()
    }

    fn written(&mut self, f: SchemaFn) -> Value {
        f(&mut self.written).to_value()
    }

    /// Every definition, by name. A name both sides define must mean the same on both.
    fn definitions(mut self) -> Map<String, Value> {
        let mut all: BTreeMap<String, Value> = BTreeMap::new();
        for (name, def) in self.written.take_definitions(false) {
            all.insert(name, def);
        }
        for (name, def) in self.read.take_definitions(false) {
            if let Some(seen) = all.get(&name) {
                assert_eq!(seen, &def, "type {name} reads differently than it is written");
            }
            all.insert(name, def);
        }
        all.into_iter().collect()
    }
}

/// The OpenRPC document for `router`.
pub(crate) fn openrpc(router: &Router) -> Value {
    let mut schemas = Schemas::new();
    let mut methods = Vec::new();
    let mut notifications: BTreeMap<&str, Value> = BTreeMap::new();
    let mut server_requests: BTreeMap<&str, Value> = BTreeMap::new();
    for d in router.descriptions() {
        let params = schemas.read(d.params);
        let result = schemas.written(d.result);
        let errors: Vec<Value> = d.errors.iter().map(|c| error_object(*c)).collect();
        let mut method = json!({
            "name": d.name,
            "description": d.summary,
            "paramStructure": "by-name",
            "params": content_descriptors(&params),
            "result": { "name": "result", "schema": result },
        });
        if !errors.is_empty() {
            method["errors"] = Value::from(errors);
        }
        if !d.notifications.is_empty() {
            method["x-notifications"] = d.notifications.iter().map(|n| n.name).collect();
        }
        if !d.server_requests.is_empty() {
            method["x-server-requests"] = d.server_requests.iter().map(|r| r.name).collect();
        }
        if d.by_connection {
            method["x-answered-by-connection"] = Value::Bool(true);
        }
        methods.push(method);
        for n in &d.notifications {
            let params = schemas.written(n.params);
            if let Some(seen) = notifications.get(n.name) {
                assert_eq!(seen["params"], params, "{} has two shapes", n.name);
            }
            let description = params.get("description").cloned().unwrap_or_default();
            notifications.insert(
                n.name,
                json!({ "name": n.name, "description": description, "params": params }),
            );
        }
        for r in &d.server_requests {
            let request = json!({
                "name": r.name,
                "description": r.summary,
                "params": schemas.written(r.params),
                "result": schemas.read(r.result),
            });
            server_requests.insert(r.name, request);
        }
    }
    let codes: Vec<Value> = code::TABLE
        .iter()
        .map(|(c, name, meaning)| json!({ "code": c, "name": name, "message": meaning }))
        .collect();
    json!({
        "openrpc": "1.2.6",
        "info": {
            "title": "butler daemon (butlerd-compatible JSON-RPC 2.0)",
            "description": INFO,
            "version": super::methods::PROTOCOL_VERSION.to_string(),
            "x-protocol-version": super::methods::PROTOCOL_VERSION,
        },
        "methods": methods,
        "components": { "schemas": schemas.definitions() },
        "x-notifications": notifications.into_values().collect::<Vec<_>>(),
        "x-server-requests": server_requests.into_values().collect::<Vec<_>>(),
        "x-error-codes": codes,
    })
}

const INFO: &str = "Newline-delimited JSON-RPC 2.0 over loopback TCP, an owner-only unix socket \
    or named pipe, or stdio. Every connection but stdio's calls Meta.Authenticate with the \
    secret of the listen notification first. Unknown fields in params are accepted and ignored, \
    as upstream butlerd does. `info.version` is the protocol version (also `x-protocol-version`, \
    and Meta.Capabilities' `protocolVersion`).";

/// OpenRPC's by-name params: one content descriptor per property of the params object.
fn content_descriptors(params: &Value) -> Vec<Value> {
    let required: Vec<&str> = params
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = params.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, schema)| {
            let mut d = json!({ "name": name, "required": required.contains(&name.as_str()) });
            if let Some(desc) = schema.get("description") {
                d["description"] = desc.clone();
            }
            d["schema"] = schema.clone();
            d
        })
        .collect()
}

fn error_object(c: i64) -> Value {
    let (_, name, meaning) = code::TABLE
        .iter()
        .find(|(k, ..)| *k == c)
        .unwrap_or_else(|| panic!("error code {c} is not in jsonrpc::code::TABLE"));
    json!({ "code": c, "message": format!("{name}: {meaning}") })
}

/// `#/components/schemas/Name` → `Name`.
fn ref_name(r: &str) -> &str {
    r.strip_prefix(DEFS).unwrap_or(r)
}

/// `Update.Check` → `UpdateCheck`, `rpc.discover` → `RpcDiscover`.
fn pascal(name: &str) -> String {
    name.split(['.', '_', '-'])
        .map(|part| {
            let mut c = part.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect()
}

/// A plausible value of `schema`, for examples: a field's own example where it has one.
/// `all`: every property (a result) rather than the required ones and those with examples
/// (params).
fn sample(schema: &Value, defs: &Map<String, Value>, all: bool, depth: usize) -> Value {
    if depth > 16 {
        return Value::Null;
    }
    if let Some(ex) = schema.get("examples").and_then(|e| e.get(0)) {
        return ex.clone();
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return defs.get(ref_name(r)).map_or(Value::Null, |d| sample(d, defs, all, depth + 1));
    }
    if let Some(first) = schema.get("enum").and_then(|e| e.get(0)) {
        return first.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(variants) = schema.get(key).and_then(Value::as_array) {
            let pick = variants.iter().find(|v| v.get("type") != Some(&json!("null")));
            return pick.map_or(Value::Null, |v| sample(v, defs, all, depth + 1));
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => {
            ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("null")
        }
        _ => "object",
    };
    match ty {
        "object" => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, p) in props {
                    if all || required.contains(&name.as_str()) || p.get("examples").is_some() {
                        out.insert(name.clone(), sample(p, defs, all, depth + 1));
                    }
                }
            }
            Value::Object(out)
        }
        "array" => match schema.get("items") {
            Some(items) => Value::Array(vec![sample(items, defs, all, depth + 1)]),
            None => json!([]),
        },
        "string" => json!("string"),
        "integer" => json!(0),
        "number" => json!(1.5),
        "boolean" => json!(false),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_type_names() {
        assert_eq!(pascal("Update.Check"), "UpdateCheck");
        assert_eq!(pascal("rpc.discover"), "RpcDiscover");
        assert_eq!(pascal("MetaFlowEstablished"), "MetaFlowEstablished");
    }

    /// Every registered method is described (a summary at least), and the description holds
    /// nothing the table does not answer.
    #[test]
    fn every_method_in_the_table_is_described_and_nothing_else() {
        let router = super::super::methods::router();
        let doc = router.openrpc();
        let described: Vec<&str> = doc["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        let registered: Vec<&str> = router.descriptions().iter().map(|d| d.name).collect();
        assert_eq!(described, registered);
        for d in router.descriptions() {
            assert!(d.summary.len() > 20, "{} has no description: add .doc(...)", d.name);
        }
        // The connection answers these two itself; they are described all the same.
        for name in ["Meta.Authenticate", "Meta.Flow"] {
            assert!(registered.contains(&name), "{name}");
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        let router = super::super::methods::router();
        let doc = router.openrpc();
        let defs = doc["components"]["schemas"].as_object().unwrap();
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"").skip(1) {
            let target = &r[..r.find('"').unwrap()];
            assert!(defs.contains_key(ref_name(target)), "{target} is not defined");
        }
    }
}
