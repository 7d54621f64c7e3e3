//! The daemon's newline framing and JSON-RPC classification (`butler::fuzz::jsonrpc`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| butler::fuzz::jsonrpc(data));
