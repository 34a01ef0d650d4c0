//! Pusher's signatures: the HMAC-SHA256 that authorizes a private or presence channel
//! subscription and a user's sign-in, that authenticates a call to the HTTP API, and
//! that signs a webhook; all hex digests with the app's secret.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use super::PusherApp;

/// How far an API request's `auth_timestamp` may be from the server's clock, in seconds.
pub const MAX_CLOCK_SKEW: u64 = 600;

/// The hex HMAC-SHA256 of `text` with `secret`.
pub fn hmac_sha256_hex(secret: &str, text: &str) -> String {
    hex(&mac(secret, text.as_bytes()))
}

fn mac(secret: &str, text: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any size");
    m.update(text);
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Compares without stopping at the first difference, so that the time taken does not
/// tell how much of a forged signature was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks an `auth` of the form `key:signature` against `text`, signed with the app's
/// secret (the hex digits in either case).
fn check_auth(app: &PusherApp, text: &str, auth: &str) -> bool {
    let Some((key, signature)) = auth.split_once(':') else { return false };
    same(key.as_bytes(), app.key.as_bytes())
        && same(signature.to_ascii_lowercase().as_bytes(), hmac_sha256_hex(&app.secret, text).as_bytes())
}

/// Checks the `auth` of a subscription to a private, encrypted or presence channel:
/// the signature of `socket_id:channel`, or of `socket_id:channel:channel_data` when
/// the subscription carries `channel_data` (presence).
pub fn verify_channel_auth(
    app: &PusherApp,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let text = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    check_auth(app, &text, auth)
}

/// Checks the `auth` of a sign-in (`pusher:signin`): the signature of
/// `socket_id::user::user_data`.
pub fn verify_user_auth(app: &PusherApp, socket_id: &str, user_data: &str, auth: &str) -> bool {
    check_auth(app, &format!("{socket_id}::user::{user_data}"), auth)
}

/// Why an API request was refused, and the HTTP status it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiAuthError {
    /// 400 for a request that lacks what authentication needs or is out of time, 401
    /// for one whose key, signature or body digest is wrong.
    pub status: u16,
    /// What was wrong, for the response's body.
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> ApiAuthError {
    ApiAuthError { status, message: message.into() }
}

/// Authenticates a call to the HTTP API: `auth_key` is the app's, `auth_timestamp` is
/// within [`MAX_CLOCK_SKEW`] of `now_secs`, `auth_version` is 1.0, `body_md5` is the
/// body's MD5 when there is a body, and `auth_signature` signs
/// `METHOD\npath\nquery` with the query's parameters but the signature sorted by their
/// lowercased names and joined unescaped.
pub fn verify_api_request(
    app: &PusherApp,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now_secs: u64,
) -> Result<(), ApiAuthError> {
    let mut params: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| refuse(400, format!("the query does not decode: {e}")))?;
    for p in &mut params {
        p.0.make_ascii_lowercase();
    }
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let (Some(key), Some(timestamp), Some(signature)) = (get("auth_key"), get("auth_timestamp"), get("auth_signature"))
    else {
        return Err(refuse(400, "auth_key, auth_timestamp and auth_signature are required"));
    };
    if let Some(version) = get("auth_version") {
        if version != "1.0" {
            return Err(refuse(400, format!("auth_version {version:?}: only 1.0 is known")));
        }
    }
    if !same(key.as_bytes(), app.key.as_bytes()) {
        return Err(refuse(401, "auth_key: not this app's key"));
    }
    let timestamp: u64 = timestamp.parse().map_err(|_| refuse(400, "auth_timestamp: not a number of seconds"))?;
    if timestamp.abs_diff(now_secs) > MAX_CLOCK_SKEW {
        return Err(refuse(
            400,
            format!("auth_timestamp: {timestamp} is more than {MAX_CLOCK_SKEW} s from the server's time {now_secs}"),
        ));
    }
    if !body.is_empty() {
        let Some(md5) = get("body_md5") else {
            return Err(refuse(400, "body_md5 is required with a body"));
        };
        if !same(md5.to_ascii_lowercase().as_bytes(), hex(&Md5::digest(body)).as_bytes()) {
            return Err(refuse(401, "body_md5: not the MD5 of the body"));
        }
    }
    let mut signed: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "auth_signature").collect();
    signed.sort();
    let query = signed.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let text = format!("{}\n{path}\n{query}", method.to_ascii_uppercase());
    if !same(signature.to_ascii_lowercase().as_bytes(), hmac_sha256_hex(&app.secret, &text).as_bytes()) {
        return Err(refuse(401, "auth_signature: invalid signature"));
    }
    Ok(())
}

/// The query a client of the HTTP API signs a request with (as the Pusher server SDKs
/// do): `auth_key`, `auth_timestamp`, `auth_version`, `body_md5` (with a body) and
/// `auth_signature`, for a request with no other parameter.
pub fn signed_query(key: &str, secret: &str, method: &str, path: &str, body: &[u8], now_secs: u64) -> String {
    let mut query = format!("auth_key={key}&auth_timestamp={now_secs}&auth_version=1.0");
    if !body.is_empty() {
        query.push_str("&body_md5=");
        query.push_str(&hex(&Md5::digest(body)));
    }
    let signature = hmac_sha256_hex(secret, &format!("{}\n{path}\n{query}", method.to_ascii_uppercase()));
    format!("{query}&auth_signature={signature}")
}

/// The `X-Pusher-Signature` of a webhook's body: its hex HMAC-SHA256 with the secret.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    hex(&mac(secret, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credentials of the worked examples in Pusher's documentation (auth
    /// signatures, and the HTTP API reference).
    fn docs_app() -> PusherApp {
        PusherApp {
            id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
            ..PusherApp::default()
        }
    }

    #[test]
    fn the_documented_channel_authorization() {
        let app = docs_app();
        assert_eq!(
            hmac_sha256_hex(&app.secret, "1234.1234:private-foobar"),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let auth = "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert!(verify_channel_auth(&app, "1234.1234", "private-foobar", None, auth));
        assert!(!verify_channel_auth(&app, "1234.1235", "private-foobar", None, auth), "another socket");
        assert!(!verify_channel_auth(&app, "1234.1234", "private-foobaz", None, auth), "another channel");
        assert!(!verify_channel_auth(&app, "1234.1234", "private-foobar", Some("{}"), auth), "data not signed");
        let other_key = auth.replace("278d", "278e");
        assert!(!verify_channel_auth(&app, "1234.1234", "private-foobar", None, &other_key));
        assert!(!verify_channel_auth(&app, "1234.1234", "private-foobar", None, "no colon"));
    }

    #[test]
    fn presence_and_sign_in_sign_their_data_too() {
        let app = docs_app();
        let data = r#"{"user_id":"10","user_info":{"name":"Mr. Channels"}}"#;
        let sig = hmac_sha256_hex(&app.secret, &format!("1234.1234:presence-foobar:{data}"));
        let auth = format!("{}:{sig}", app.key);
        assert!(verify_channel_auth(&app, "1234.1234", "presence-foobar", Some(data), &auth));
        assert!(!verify_channel_auth(&app, "1234.1234", "presence-foobar", Some(&data.replace("10", "11")), &auth));
        let user = r#"{"id":"10"}"#;
        let sig = hmac_sha256_hex(&app.secret, &format!("1234.1234::user::{user}"));
        assert!(verify_user_auth(&app, "1234.1234", user, &format!("{}:{sig}", app.key)));
        assert!(!verify_user_auth(&app, "1234.1234", r#"{"id":"11"}"#, &format!("{}:{sig}", app.key)));
    }

    const DOCS_BODY: &[u8] = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const DOCS_QUERY: &str = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
        &body_md5=ec365a775a4cd0599faeb73354201b6f\
        &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    #[test]
    fn the_documented_api_request() {
        let app = docs_app();
        assert_eq!(hex(&Md5::digest(DOCS_BODY)), "ec365a775a4cd0599faeb73354201b6f");
        assert_eq!(verify_api_request(&app, "POST", "/apps/3/events", DOCS_QUERY, DOCS_BODY, 1353088179), Ok(()));
        assert_eq!(verify_api_request(&app, "POST", "/apps/3/events", DOCS_QUERY, DOCS_BODY, 1353088179 + 600), Ok(()));
    }

    #[test]
    fn a_signed_query_is_the_documented_one_and_verifies() {
        let app = docs_app();
        let query = signed_query(&app.key, &app.secret, "POST", "/apps/3/events", DOCS_BODY, 1353088179);
        assert_eq!(query, DOCS_QUERY);
        let get = signed_query(&app.key, &app.secret, "GET", "/apps/3/channels", b"", 1353088179);
        assert_eq!(verify_api_request(&app, "GET", "/apps/3/channels", &get, b"", 1353088179), Ok(()));
    }

    #[test]
    fn api_requests_are_refused_with_the_right_status() {
        let app = docs_app();
        let status = |method: &str, path: &str, query: &str, body: &[u8], now: u64| {
            verify_api_request(&app, method, path, query, body, now).map_err(|e| e.status)
        };
        let t = 1353088179;
        assert_eq!(status("POST", "/apps/3/events", DOCS_QUERY, DOCS_BODY, t + 601), Err(400), "too late");
        assert_eq!(status("POST", "/apps/3/events", DOCS_QUERY, DOCS_BODY, t - 601), Err(400), "too early");
        assert_eq!(status("POST", "/apps/3/events", DOCS_QUERY, b"{}", t), Err(401), "another body");
        assert_eq!(status("POST", "/apps/4/events", DOCS_QUERY, DOCS_BODY, t), Err(401), "another path");
        assert_eq!(status("GET", "/apps/3/events", DOCS_QUERY, DOCS_BODY, t), Err(401), "another method");
        let forged = DOCS_QUERY.replace("auth_signature=da45", "auth_signature=da46");
        assert_eq!(status("POST", "/apps/3/events", &forged, DOCS_BODY, t), Err(401));
        let other_key = DOCS_QUERY.replace("auth_key=278d", "auth_key=278e");
        assert_eq!(status("POST", "/apps/3/events", &other_key, DOCS_BODY, t), Err(401));
        let unsigned = DOCS_QUERY.split("&auth_signature").next().unwrap();
        assert_eq!(status("POST", "/apps/3/events", unsigned, DOCS_BODY, t), Err(400));
        let no_md5 = DOCS_QUERY.replace("&body_md5=ec365a775a4cd0599faeb73354201b6f", "");
        assert_eq!(status("POST", "/apps/3/events", &no_md5, DOCS_BODY, t), Err(400));
        let v2 = DOCS_QUERY.replace("auth_version=1.0", "auth_version=2.0");
        assert_eq!(status("POST", "/apps/3/events", &v2, DOCS_BODY, t), Err(400));
    }

    #[test]
    fn a_get_signs_its_other_parameters_unescaped_and_sorted() {
        let app = docs_app();
        let text = "GET\n/apps/3/channels\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179\
            &auth_version=1.0&filter_by_prefix=presence-&info=user_count,subscription_count";
        let sig = hmac_sha256_hex(&app.secret, text);
        // Escaped and in another order on the wire, as a client may send it.
        let query = format!(
            "info=user_count%2Csubscription_count&filter_by_prefix=presence-&auth_version=1.0\
             &auth_timestamp=1353088179&auth_key=278d425bdf160c739803&auth_signature={sig}"
        );
        assert_eq!(verify_api_request(&app, "GET", "/apps/3/channels", &query, b"", 1353088179), Ok(()));
    }

    #[test]
    fn webhooks_sign_their_body() {
        let sig = webhook_signature("7ad3773142a6692b25b8", br#"{"time_ms":1,"events":[]}"#);
        assert_eq!(sig, hmac_sha256_hex("7ad3773142a6692b25b8", r#"{"time_ms":1,"events":[]}"#));
        assert_eq!(sig.len(), 64);
    }
}
