//! A `Connection` with permessage-deflate on, in the role and with the parameters the
//! input's first byte picks, fed arbitrary peer bytes (compressed frames among them) in
//! fuzzer-chosen chunks and echoing every message compressed; see
//! `volley_fuzz::run_deflate_connection`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| volley_fuzz::run_deflate_connection(data));
