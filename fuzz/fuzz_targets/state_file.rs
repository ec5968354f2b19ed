//! See `netkey::fuzzing::state_file` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netkey::fuzzing::state_file(data));
