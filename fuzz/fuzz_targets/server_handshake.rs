//! `Request::parse` on arbitrary bytes. When a request is accepted, the 101 answer
//! (echoing its first subprotocol and every extension offer) must satisfy a
//! `ClientRequest` with the same key and offers, and that client's request must parse
//! back to the same key, target and offers.
#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use volley_proto::handshake::{ClientRequest, Request, Response};
use volley_proto::{Config, RandomSource};

fuzz_target!(|data: &[u8]| {
    let config = Config::default();
    let result = Request::parse(data, &config);

    // The same input under tight limits: never accepted where the defaults refuse it.
    let mut tight = Config::default();
    tight.max_handshake_size = 128;
    tight.max_headers = 6;
    if let Ok(Some((_, n))) = Request::parse(data, &tight) {
        assert!(matches!(&result, Ok(Some((_, m))) if *m == n));
    }

    let (req, n) = match result {
        Ok(Some(ok)) => ok,
        Ok(None) => {
            assert!(data.len() <= config.max_handshake_size);
            return;
        }
        Err(e) => {
            assert!((400..=431).contains(&e.status()));
            assert!(e.response().starts_with(b"HTTP/1.1 4"));
            return;
        }
    };
    assert!(n <= data.len() && n <= config.max_handshake_size);
    assert_eq!(req.method(), "GET");
    assert!(req.host().is_some());
    let _ = (req.path(), req.query(), req.origin(), req.cookies().count());
    let _ = (req.headers().iter().count(), req.header("user-agent"));
    let _ = req.pick_protocol(&["chat", "superchat"]);

    let mut response = Response::accept(&req);
    if let Some(p) = req.protocols().first() {
        response.set_protocol(&req, p).expect("offered protocol refused");
    }
    for e in req.extensions() {
        response.add_extension(e.clone());
    }
    let answer = response.encode();

    let nonce = BASE64.decode(req.key()).expect("accepted key is not base64");
    assert_eq!(nonce.len(), 16);
    let mut client_config = Config::default();
    client_config.random = RandomSource::from_fn(move |buf| {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = nonce[i % 16];
        }
    });
    let mut client = ClientRequest::new("h", req.target(), &client_config);
    assert_eq!(client.key(), req.key(), "accepted a non-canonical key");
    for p in req.protocols() {
        client.add_protocol(p).expect("accepted protocol is not a token");
    }
    for e in req.extensions() {
        client.add_extension(e.clone());
    }
    let (checked, m) = client
        .parse_response(&answer, &client_config)
        .expect("client refused the server's 101")
        .expect("101 answer incomplete");
    assert_eq!(m, answer.len());
    assert_eq!(checked.status(), 101);
    assert_eq!(checked.protocol(), req.protocols().first().map(String::as_str));
    assert_eq!(checked.extensions(), req.extensions());

    let again = client.encode();
    let (req2, n2) =
        Request::parse(&again, &config).expect("client request refused").expect("client request incomplete");
    assert_eq!(n2, again.len());
    assert_eq!(req2.key(), req.key());
    assert_eq!(req2.target(), req.target());
    assert_eq!(req2.protocols(), req.protocols());
    assert_eq!(req2.extensions(), req.extensions());
});
