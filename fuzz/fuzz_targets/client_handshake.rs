//! `ClientRequest::parse_response` on arbitrary bytes, for a request with a fixed key
//! that offers the `chat` subprotocol and permessage-deflate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley_proto::handshake::ClientRequest;
use volley_proto::ExtensionOffer;

fuzz_target!(|data: &[u8]| {
    let config = volley_fuzz::small_config();
    let mut request = ClientRequest::new("server.example.com", "/chat", &config);
    request.add_protocol("chat").unwrap();
    request.add_extension(ExtensionOffer {
        name: "permessage-deflate".into(),
        params: vec![("client_max_window_bits".into(), None)],
    });
    match request.parse_response(data, &config) {
        Ok(Some((response, n))) => {
            assert!(n <= data.len() && n <= config.max_handshake_size);
            assert_eq!(response.status(), 101);
            assert!(matches!(response.protocol(), None | Some("chat")));
            assert!(response.extensions().iter().all(|e| e.name == "permessage-deflate"));
            let _ = response.headers().iter().count();
        }
        Ok(None) => assert!(data.len() <= config.max_handshake_size),
        Err(e) => {
            let _ = (e.to_string(), e.status());
        }
    }
});
