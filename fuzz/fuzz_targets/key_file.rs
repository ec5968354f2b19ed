//! See `netkey::fuzzing::key_file` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netkey::fuzzing::key_file(data));
