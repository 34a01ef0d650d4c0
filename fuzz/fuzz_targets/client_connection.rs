//! A client `Connection` (fixed masking key) fed arbitrary server bytes in
//! fuzzer-chosen chunks, echoing every message; see `volley_fuzz::run_connection`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley_proto::Role;

fuzz_target!(|data: &[u8]| volley_fuzz::run_connection(Role::Client, data));
