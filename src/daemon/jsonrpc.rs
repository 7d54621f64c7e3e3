//! JSON-RPC 2.0 messages: classifying what a peer sent, and the shapes we write back.
//!
//! Raw `serde_json::Value`s stay in this RPC layer (here, the connection and the router);
//! handlers see typed structs. Ids are kept as the exact JSON the client sent (a number or a
//! string), so they are echoed back unchanged.

use std::borrow::Cow;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::version;

/// Error codes. The negative ones are JSON-RPC 2.0's; the positive ones are butlerd's
/// application codes, kept where the meaning matches upstream.
pub(crate) mod code {
    pub(crate) const PARSE_ERROR: i64 = -32700;
    pub(crate) const INVALID_REQUEST: i64 = -32600;
    pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
    pub(crate) const INVALID_PARAMS: i64 = -32602;
    pub(crate) const INTERNAL_ERROR: i64 = -32603;
    /// The connection limit is reached; the connection is closed after this reply.
    pub(crate) const TOO_MANY_CONNECTIONS: i64 = -32001;
    /// No `Meta.Authenticate` arrived in time; the connection is closed after this reply.
    pub(crate) const AUTHENTICATION_TIMEOUT: i64 = -32003;
    /// The database could not be opened or migrated.
    pub(crate) const DATABASE_UNAVAILABLE: i64 = -32004;
    /// A long request ended so a restart in place need not wait for it; send it again, on the
    /// same connection (it stays open through the restart).
    pub(crate) const RESTARTING: i64 = -32005;
    /// Every in-flight slot of the connection is taken while some of its requests wait for the
    /// client's answers, which can only arrive on the same connection: the request is refused
    /// (waiting for a slot could never end). Answer the daemon's calls, then send it again.
    pub(crate) const TOO_MANY_IN_FLIGHT: i64 = -32006;
    /// Upstream's `OperationCancelled`.
    pub(crate) const OPERATION_CANCELLED: i64 = 499;
    /// Upstream's `NetworkDisconnected`.
    pub(crate) const NETWORK_DISCONNECTED: i64 = 9000;

    /// Every code with its name and meaning, for the API description; JSON-RPC's own (the
    /// negative ones from -32700 to -32603) may come from any method.
    pub(crate) const TABLE: &[(i64, &str, &str)] = &[
        (PARSE_ERROR, "ParseError", "The line is not JSON (the reply's id is null)."),
        (
            INVALID_REQUEST,
            "InvalidRequest",
            "Not a JSON-RPC request, a line or batch over the limit, a request before \
             Meta.Authenticate, or a wrong secret.",
        ),
        (METHOD_NOT_FOUND, "MethodNotFound", "No such method."),
        (
            INVALID_PARAMS,
            "InvalidParams",
            "The params do not fit the method; the message says why, and `data.field` names \
             the field when one is to blame. Unknown fields are ignored, not refused.",
        ),
        (INTERNAL_ERROR, "InternalError", "The daemon failed; the message says what."),
        (
            TOO_MANY_CONNECTIONS,
            "TooManyConnections",
            "The connection limit is reached; the connection is closed after this reply.",
        ),
        (
            AUTHENTICATION_TIMEOUT,
            "AuthenticationTimeout",
            "No Meta.Authenticate in time; the connection is closed after this reply.",
        ),
        (
            DATABASE_UNAVAILABLE,
            "DatabaseUnavailable",
            "The database could not be opened or migrated.",
        ),
        (
            RESTARTING,
            "Restarting",
            "A long request ended so a restart in place need not wait for it; send it again \
             on the same connection, which stays open.",
        ),
        (
            TOO_MANY_IN_FLIGHT,
            "TooManyInFlight",
            "Every in-flight slot of the connection (256) is taken while some of its requests \
             wait for the client's answers to the daemon's calls: answer those, then send the \
             request again. (Without such calls the daemon simply stops reading until a slot \
             frees.)",
        ),
        (OPERATION_CANCELLED, "OperationCancelled", "The operation was cancelled (as upstream)."),
        (
            NETWORK_DISCONNECTED,
            "NetworkDisconnected",
            "The update server could not be reached (as upstream).",
        ),
    ];
}

/// An error reply. `data` always carries `butlerVersion`, plus any details given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcError {
    pub code: i64,
    pub message: String,
    pub details: Map<String, Value>,
}

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), details: Map::new() }
    }

    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub(crate) fn parse_error(reason: impl std::fmt::Display) -> Self {
        Self::new(code::PARSE_ERROR, format!("parse error: {reason}"))
    }

    pub(crate) fn invalid_request(reason: impl Into<String>) -> Self {
        Self::new(code::INVALID_REQUEST, reason)
    }

    pub(crate) fn method_not_found(method: &str) -> Self {
        Self::new(code::METHOD_NOT_FOUND, format!("method '{method}' not found"))
    }

    pub(crate) fn invalid_params(method: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(code::INVALID_PARAMS, format!("invalid params for {method}: {reason}"))
    }

    pub(crate) fn internal(reason: impl std::fmt::Display) -> Self {
        Self::new(code::INTERNAL_ERROR, format!("internal error: {reason}"))
    }

    pub(crate) fn cancelled() -> Self {
        Self::new(code::OPERATION_CANCELLED, "the operation was cancelled")
    }
}

impl Serialize for RpcError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Data<'a>(&'a Map<String, Value>);
        impl Serialize for Data<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len() + 1))?;
                m.serialize_entry("butlerVersion", &version::tagged())?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("code", &self.code)?;
        m.serialize_entry("message", &self.message)?;
        m.serialize_entry("data", &Data(&self.details))?;
        m.end()
    }
}

/// One message from the peer, classified.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    /// A reply to a request we sent the peer.
    Response {
        id: Value,
        result: Result<Value, RpcError>,
    },
    /// Valid JSON that is not a JSON-RPC message; `id` is echoed when it could be read.
    Invalid {
        id: Value,
        error: RpcError,
    },
}

/// Classifies one element (an object, or anything else found in a line or a batch).
pub(crate) fn classify(value: Value) -> Incoming {
    let Value::Object(mut obj) = value else {
        return invalid(Value::Null, "a JSON-RPC message must be an object");
    };
    let id = obj.remove("id");
    let id_ok = matches!(id, Some(Value::Number(_) | Value::String(_)));
    let echo = if id_ok { id.clone().unwrap_or(Value::Null) } else { Value::Null };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(echo, "\"jsonrpc\" must be \"2.0\"");
    }
    match obj.remove("method") {
        Some(Value::String(method)) => {
            let params = match obj.remove("params") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(p @ (Value::Object(_) | Value::Array(_))) => p,
                Some(_) => return invalid(echo, "\"params\" must be an object or an array"),
            };
            match id {
                None | Some(Value::Null) => Incoming::Notification { method, params },
                Some(_) if id_ok => Incoming::Request { id: echo, method, params },
                Some(_) => invalid(Value::Null, "\"id\" must be a number or a string"),
            }
        }
        Some(_) => invalid(echo, "\"method\" must be a string"),
        None => {
            if !id_ok {
                return invalid(
                    Value::Null,
                    "a message needs a \"method\" (or an \"id\" if a reply)",
                );
            }
            let result = match (obj.remove("result"), obj.remove("error")) {
                (Some(r), None) => Ok(r),
                (None, Some(e)) => Err(error_from_value(e)),
                _ => return invalid(echo, "a reply needs exactly one of \"result\" or \"error\""),
            };
            Incoming::Response { id: echo, result }
        }
    }
}

/// The usual message, a request or notification, read straight into its parts.
#[derive(Deserialize)]
struct Plain<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default)]
    params: Option<Value>,
}

/// Classifies a line holding one well-formed request or notification without building a map
/// for its envelope (the daemon's hot path). `None` for anything else (a batch, a reply, a
/// malformed message, a duplicated key): [`classify`] then says what it is, and for what this
/// answers it agrees with [`classify`].
pub(crate) fn classify_plain(line: &[u8]) -> Option<Incoming> {
    // A derived struct also reads from an array, by position: only objects come here.
    if line.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let plain: Plain<'_> = serde_json::from_slice(line).ok()?;
    if plain.jsonrpc != "2.0" {
        return None;
    }
    let params = match plain.params {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ (Value::Object(_) | Value::Array(_))) => p,
        Some(_) => return None,
    };
    let method = plain.method.into_owned();
    match plain.id {
        None => Some(Incoming::Notification { method, params }),
        Some(id @ (Value::Number(_) | Value::String(_))) => {
            Some(Incoming::Request { id, method, params })
        }
        Some(_) => None,
    }
}

fn invalid(id: Value, reason: &str) -> Incoming {
    Incoming::Invalid { id, error: RpcError::invalid_request(format!("invalid request: {reason}")) }
}

fn error_from_value(e: Value) -> RpcError {
    let code = e.get("code").and_then(Value::as_i64).unwrap_or(code::INTERNAL_ERROR);
    let message = e.get("message").and_then(Value::as_str).unwrap_or("error from peer");
    RpcError::new(code, message)
}

/// A reply line body.
#[derive(Debug, Serialize)]
pub(crate) struct Response<'a> {
    pub jsonrpc: &'static str,
    pub id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a RpcError>,
}

impl<'a> Response<'a> {
    pub(crate) fn new(id: &'a Value, result: &'a Result<Value, RpcError>) -> Self {
        let (result, error) = match result {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        Response { jsonrpc: "2.0", id, result, error }
    }
}

/// A request or notification we send the peer.
#[derive(Debug, Serialize)]
pub(crate) struct Outgoing<'a, P: Serialize> {
    pub jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub method: &'a str,
    pub params: P,
}

/// Serializes `msg` followed by `\n`.
pub(crate) fn to_line(msg: &impl Serialize) -> Vec<u8> {
    let mut line = Vec::with_capacity(128);
    write_line(&mut line, msg);
    line
}

/// Appends `msg` and `\n` to `out`.
pub(crate) fn write_line(out: &mut Vec<u8>, msg: &impl Serialize) {
    let start = out.len();
    if let Err(e) = serde_json::to_writer(&mut *out, msg) {
        // Only non-string map keys can fail here, and our types have none.
        out.truncate(start);
        let error = format!(
            r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32603,"message":{}}}}}"#,
            Value::String(e.to_string())
        );
        out.extend_from_slice(error.as_bytes());
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_keep_their_id_exactly() {
        for id in [json!(7), json!("abc"), json!(1.5), json!(-3)] {
            let msg = classify(json!({"jsonrpc":"2.0","id":id,"method":"X"}));
            assert_eq!(msg, Incoming::Request { id, method: "X".into(), params: json!({}) });
        }
    }

    #[test]
    fn a_float_id_echoes_back_as_the_same_number() {
        // Past u64 an id is a double; it must be read exactly, or its echo reads back different.
        let line = br#"{"jsonrpc":"2.0","id":18446744073709844674407,"method":"X"}"#;
        let Incoming::Request { id, .. } = classify(serde_json::from_slice(line).unwrap()) else {
            panic!()
        };
        let reply = to_line(&Response::new(&id, &Ok(Value::Null)));
        let back: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(back["id"], id);
        assert_eq!(id.as_f64(), Some(18446744073709844674407.0));
    }

    #[test]
    fn missing_or_null_id_is_a_notification() {
        assert!(matches!(
            classify(json!({"jsonrpc":"2.0","method":"X"})),
            Incoming::Notification { .. }
        ));
        assert!(matches!(
            classify(json!({"jsonrpc":"2.0","method":"X","id":null})),
            Incoming::Notification { .. }
        ));
    }

    #[test]
    fn not_a_request() {
        for v in [json!(1), json!({"jsonrpc":"2.0"}), json!({"method":"X","id":1})] {
            assert!(matches!(classify(v), Incoming::Invalid { .. }));
        }
        let Incoming::Invalid { id, .. } = classify(json!({"jsonrpc":"2.0","id":{},"method":"X"}))
        else {
            panic!()
        };
        assert_eq!(id, Value::Null);
    }

    #[test]
    fn replies_from_the_peer() {
        let Incoming::Response { id, result } =
            classify(json!({"jsonrpc":"2.0","id":0,"result":{"n":1}}))
        else {
            panic!()
        };
        assert_eq!((id, result), (json!(0), Ok(json!({"n":1}))));
    }

    #[test]
    fn the_hot_path_takes_plain_requests_only() {
        let plain = br#" {"jsonrpc":"2.0","id":"a\u0062","method":"Version.Get","params":{}}"#;
        assert_eq!(
            classify_plain(plain),
            Some(Incoming::Request {
                id: json!("ab"),
                method: "Version.Get".into(),
                params: json!({})
            })
        );
        for general in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"X","method":"Y"}"#[..],
            br#"["2.0",1,"X",{}]"#,
            br#"{"jsonrpc":"2.0","id":true,"method":"X"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"X","params":3}"#,
            br#"{"jsonrpc":"1.0","id":1,"method":"X"}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        ] {
            assert_eq!(classify_plain(general), None, "{}", String::from_utf8_lossy(general));
        }
    }

    #[test]
    fn error_data_always_carries_the_version() {
        let e = RpcError::new(1, "x").with("path", "p");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["data"]["butlerVersion"], version::tagged());
        assert_eq!(v["data"]["path"], "p");
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[a-zA-Z.2]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            let key = prop_oneof![
                Just("jsonrpc".to_owned()),
                Just("id".to_owned()),
                Just("method".to_owned()),
                Just("params".to_owned()),
                Just("result".to_owned()),
                Just("error".to_owned()),
                "[a-z]{1,3}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn classification_is_total_and_ids_are_only_numbers_or_strings(v in any_json()) {
            match classify(v) {
                Incoming::Request { id, .. } | Incoming::Response { id, .. } => {
                    proptest::prop_assert!(id.is_number() || id.is_string());
                }
                Incoming::Invalid { id, error } => {
                    proptest::prop_assert!(id.is_null() || id.is_number() || id.is_string());
                    proptest::prop_assert_eq!(error.code, code::INVALID_REQUEST);
                }
                Incoming::Notification { params, .. } => {
                    proptest::prop_assert!(params.is_object() || params.is_array());
                }
            }
        }

        #[test]
        fn the_hot_path_classifies_as_the_general_one(
            v in any_json(),
            method in "[a-zA-Z.]{1,8}",
            id in any_json(),
            params in any_json(),
        ) {
            // Arbitrary values, and requests well-formed enough to take the hot path.
            let request = json!({"jsonrpc":"2.0","method":method,"id":id,"params":params});
            let bare = json!({"params":{"a":[1]},"method":method,"jsonrpc":"2.0"});
            for v in [v, request, bare] {
                let line = serde_json::to_vec(&v).unwrap();
                if let Some(plain) = classify_plain(&line) {
                    proptest::prop_assert_eq!(plain, classify(v));
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                let _ = classify(v);
            }
        }
    }
}
