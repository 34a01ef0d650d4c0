//! A server `Connection` fed arbitrary client bytes in fuzzer-chosen chunks, echoing
//! every message; see `volley_fuzz::run_connection` for the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley_proto::Role;

fuzz_target!(|data: &[u8]| volley_fuzz::run_connection(Role::Server, data));
