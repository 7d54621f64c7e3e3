//! Datagram streams' uvarint framing through the cutter (`butler::fuzz::datagram`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| butler::fuzz::datagram(data));
