//! The updater's safe unzip on a downloaded archive (`butler_updater::fuzz::unzip`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| butler_updater::fuzz::unzip(data));
