//! See `netkey::fuzzing::frame` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netkey::fuzzing::frame(data));
