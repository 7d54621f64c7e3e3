//! The bundler's cutter on text and binary streams (`butler::fuzz::cutter`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| butler::fuzz::cutter(data));
