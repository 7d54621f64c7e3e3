//! The stream server's handshake and stream specs (`butler::fuzz::handshake`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| butler::fuzz::handshake(data));
