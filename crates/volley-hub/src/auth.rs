//! Tokens: connection and subscription JWTs as Centrifugo reads them, their keys (HMAC,
//! RSA, ECDSA, EdDSA, or a JWKS endpoint) and the claims the clients use.
//!
//! A [`TokenVerifier`] is built once from a [`TokenConfig`] (the keys of Centrifugo's
//! `client.token` section; a second verifier from a second config serves subscription
//! tokens when they have keys of their own, like Centrifugo's `client.subscription_token`).
//! [`TokenVerifier::verify_connect`] and [`TokenVerifier::verify_subscribe`] check a token
//! and hand back its claims as [`ConnectToken`] and [`SubscribeToken`].
//!
//! What is checked, as Centrifugo checks it:
//!
//! - The signature, with the key configured for the token's `alg`: HS256/384/512 with
//!   `hmac_secret_key`; RS256/384/512 and PS256/384/512 with `rsa_public_key`; ES256 or
//!   ES384 with `ecdsa_public_key` (the one its curve signs: P-256 or P-384); EdDSA
//!   (Ed25519) with `ed25519_public_key`. An `alg` no configured key signs (`none`
//!   included, and HS256 where only public keys are configured) is refused: a token never
//!   chooses its key's type. With `jwks_public_endpoint`, every token is checked with the
//!   key its `kid` names in that JWK set, and with no other.
//! - `exp`: a token whose `exp` has passed is [`TokenError::Expired`] (no leeway), so a
//!   client asks its backend for a new one; `nbf` in the future is refused the same way.
//! - `aud` and `iss`, when `audience` and `issuer` are configured.
//! - The claims' types: a token whose claims do not parse (`channels` not an array of
//!   strings, `b64info` not base64, ...) is [`TokenError::Invalid`].
//!
//! What the caller checks (the hub's engine): that a subscription token's `channel`,
//! `sub` and `client` are those of the subscription ([`SubscribeToken::check`]), and that a
//! connection whose [`ConnectToken::expire_at`] has passed is refused (error 110).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Number;
use volley::tls::rustls::ClientConfig;

use crate::http_client::{Endpoint, Request};

/// The keys and checks of one kind of token: Centrifugo's `client.token` section (and
/// `client.subscription_token`, less its `enabled`), with the same key names.
///
/// Every field is optional; empty strings count as absent. A verifier with no key at all
/// refuses every token.
#[derive(Clone, Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// The secret of HS256, HS384 and HS512 tokens (its UTF-8 bytes, as Centrifugo uses
    /// it). Without it, HMAC tokens are refused.
    pub hmac_secret_key: Option<String>,
    /// The previous HMAC secret, during a rotation: HMAC tokens that `hmac_secret_key`
    /// does not verify are tried with it until `hmac_previous_secret_key_valid_until`.
    pub hmac_previous_secret_key: Option<String>,
    /// The time (Unix seconds) after which tokens signed with `hmac_previous_secret_key`
    /// are refused; required with it.
    pub hmac_previous_secret_key_valid_until: Option<u64>,
    /// An RSA public key, PEM (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout`
    /// writes it), of 2048 to 8192 bits: verifies RS256/384/512 and PS256/384/512 tokens.
    pub rsa_public_key: Option<String>,
    /// An ECDSA public key, PEM: a P-256 key verifies ES256 tokens, a P-384 key ES384
    /// tokens (P-521 and ES512 are not supported).
    pub ecdsa_public_key: Option<String>,
    /// An Ed25519 public key, PEM: verifies EdDSA tokens. (Centrifugo takes Ed25519 keys
    /// only from a JWKS endpoint.)
    pub ed25519_public_key: Option<String>,
    /// The URL (`https://` or `http://`) of a JSON Web Key Set. When set, every token is
    /// verified with the key of that set its header's `kid` names (RSA, EC P-256/P-384 or
    /// Ed25519 keys, `use` absent or `sig`), and the keys above must not be set. Keys are
    /// cached for an hour, and the set is fetched again (at most every 10 s) when a token
    /// names a key it does not hold.
    pub jwks_public_endpoint: Option<String>,
    /// When set, a token's `aud` (a string, or an array of strings) must hold it.
    pub audience: Option<String>,
    /// When set, a token's `iss` must be it.
    pub issuer: Option<String>,
    /// The claim that holds the user's id instead of `sub`: a name, or a path into nested
    /// objects with dots (`user.id`). A string is taken as is, a number or a boolean as its
    /// JSON text; a missing claim means the empty user id.
    pub user_id_claim: Option<String>,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<secret>");
        f.debug_struct("TokenConfig")
            .field("hmac_secret_key", &secret(&self.hmac_secret_key))
            .field("hmac_previous_secret_key", &secret(&self.hmac_previous_secret_key))
            .field("hmac_previous_secret_key_valid_until", &self.hmac_previous_secret_key_valid_until)
            .field("rsa_public_key", &self.rsa_public_key)
            .field("ecdsa_public_key", &self.ecdsa_public_key)
            .field("ed25519_public_key", &self.ed25519_public_key)
            .field("jwks_public_endpoint", &self.jwks_public_endpoint)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("user_id_claim", &self.user_id_claim)
            .finish()
    }
}

/// A [`TokenConfig`] that cannot work: the key at fault and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config key (`rsa_public_key`, `jwks_public_endpoint`, ...).
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(key: &'static str, reason: impl Into<String>) -> Self {
        ConfigError { key, reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Why a token was refused.
///
/// Centrifugo answers a connect or subscribe whose token [`Expired`](Self::Expired) with
/// error 109 (the client gets a new token and tries again), and disconnects a client whose
/// token is [`Invalid`](Self::Invalid) with 3500 (it does not reconnect).
/// [`KeysUnavailable`](Self::KeysUnavailable) is neither the client's fault nor final: an
/// internal error (100, temporary) fits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// `exp` has passed, or `nbf` has not come yet.
    Expired,
    /// Malformed, wrongly signed, signed with an algorithm or key not accepted, for
    /// another audience or issuer, or with claims of the wrong type: why, for logs (never
    /// for the client).
    Invalid(String),
    /// The JWKS endpoint could not be read, so the token could not be checked.
    KeysUnavailable(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Expired => f.write_str("token expired"),
            TokenError::Invalid(reason) => write!(f, "invalid token: {reason}"),
            TokenError::KeysUnavailable(reason) => write!(f, "token keys unavailable: {reason}"),
        }
    }
}

impl std::error::Error for TokenError {}

fn invalid(reason: impl Into<String>) -> TokenError {
    TokenError::Invalid(reason.into())
}

/// The claims of a verified connection token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectToken {
    /// The user's id (`sub`, or the claim `user_id_claim` names); empty for a user the
    /// application did not authenticate.
    pub user: String,
    /// When the connection expires, in Unix seconds: `expire_at` if the token has it (0
    /// there means never), otherwise `exp`; `None` for never. The client refreshes its
    /// token before then; a time already past means the connection is refused.
    pub expire_at: Option<u64>,
    /// `iat`: when the token was issued (Unix seconds).
    pub issued_at: Option<u64>,
    /// `jti`: the token's id.
    pub jti: Option<String>,
    /// The connection's info, shown to others in presence, joins, leaves and
    /// publications: `info`'s JSON text byte for byte, or `b64info` decoded (which wins
    /// when both are set).
    pub info: Option<Bytes>,
    /// `channels`: server-side subscriptions, as the token lists them.
    pub channels: Vec<String>,
    /// The server-side subscriptions to make: `subs` if the token has a non-empty one,
    /// otherwise each of `channels` with default options (as Centrifugo, which ignores
    /// `channels` when `subs` is set).
    pub subs: BTreeMap<String, SubscribeOptions>,
    /// `meta`: the connection's metadata (normally a JSON object), JSON text byte for
    /// byte; kept on the server, never shown to clients.
    pub meta: Option<Bytes>,
}

/// The options of one subscription a token grants: a server-side one from a connection
/// token's `subs`, or the one a subscription token allows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscribeOptions {
    /// The client's info in this channel (`chan_info` of presence, joins and leaves):
    /// `info`'s JSON text byte for byte, or `b64info` decoded (which wins).
    pub info: Option<Bytes>,
    /// Data for the client in its subscribe result: `data`'s JSON text byte for byte, or
    /// `b64data` decoded (which wins).
    pub data: Option<Bytes>,
    /// `override`: the channel's options this subscription changes.
    pub overrides: SubscribeOverrides,
}

/// Channel options a token overrides for its subscription (`"override": {"presence":
/// {"value": true}, ...}`); `None` keeps the channel's (namespace's) own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOverrides {
    /// `presence`: the client is in the channel's presence.
    pub presence: Option<bool>,
    /// `join_leave`: others get join and leave pushes for the client.
    pub join_leave: Option<bool>,
    /// `force_push_join_leave`: the client gets join and leave pushes.
    pub force_push_join_leave: Option<bool>,
    /// `force_recovery`: the subscription recovers missed publications.
    pub force_recovery: Option<bool>,
    /// `force_positioning`: the subscription tracks its position in the stream.
    pub force_positioning: Option<bool>,
}

/// The claims of a verified subscription token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscribeToken {
    /// The channel the token is for (`channel`, never empty): it must be the one
    /// subscribed to ([`SubscribeToken::check`]).
    pub channel: String,
    /// The user the token is for (`sub`, or `user_id_claim`): it must be the connection's.
    pub user: String,
    /// `client`: when set, the only connection (by its id) the token is for.
    pub client: Option<String>,
    /// When the subscription expires, in Unix seconds: `expire_at` if set (0 means
    /// never), otherwise `exp`; `None` for never.
    pub expire_at: Option<u64>,
    /// `iat`: when the token was issued (Unix seconds).
    pub issued_at: Option<u64>,
    /// `jti`: the token's id.
    pub jti: Option<String>,
    /// `info`/`b64info`, `data`/`b64data` and `override`.
    pub options: SubscribeOptions,
}

impl SubscribeToken {
    /// Checks that the token is for this subscription: `channel`, by `user`, on the
    /// connection `client`. A mismatch is [`TokenError::Invalid`], which Centrifugo answers
    /// by disconnecting the client (3500, invalid token).
    pub fn check(&self, channel: &str, user: &str, client: &str) -> Result<(), TokenError> {
        if self.channel != channel {
            return Err(invalid(format!("the token is for channel {:?}, not {channel:?}", self.channel)));
        }
        if self.user != user {
            return Err(invalid(format!("the token is for user {:?}, not {user:?}", self.user)));
        }
        if let Some(for_client) = &self.client {
            if for_client != client {
                return Err(invalid(format!("the token is for client {for_client:?}, not {client:?}")));
            }
        }
        Ok(())
    }
}

/// Checks connection and subscription tokens with the keys of a [`TokenConfig`]. Cheap to
/// clone (clones share the keys and the JWKS cache).
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    hmac: Option<DecodingKey>,
    /// The previous HMAC secret and the Unix time (seconds) it is refused from.
    hmac_previous: Option<(DecodingKey, u64)>,
    /// RSA, ECDSA and Ed25519 keys: the first whose algorithms hold a token's `alg`
    /// verifies it.
    keys: Vec<Key>,
    jwks: Option<Jwks>,
    audience: Option<String>,
    issuer: Option<String>,
    user_id_claim: Option<Vec<String>>,
}

/// A public key and the algorithms it verifies.
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let algorithms: Vec<Algorithm> = inner.keys.iter().flat_map(|k| k.algorithms.iter().copied()).collect();
        f.debug_struct("TokenVerifier")
            .field("hmac", &inner.hmac.is_some())
            .field("hmac_previous_valid_until", &inner.hmac_previous.as_ref().map(|(_, until)| until))
            .field("public_key_algorithms", &algorithms)
            .field("jwks_public_endpoint", &inner.jwks.as_ref().map(|j| &j.endpoint.url))
            .field("audience", &inner.audience)
            .field("issuer", &inner.issuer)
            .field("user_id_claim", &inner.user_id_claim)
            .finish()
    }
}

const HMAC_ALGORITHMS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGORITHMS: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// How long fetched JWKS keys are used, and how often the set may be fetched at most.
#[derive(Clone, Copy, Debug)]
struct JwksTiming {
    ttl: Duration,
    min_refetch: Duration,
    timeout: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        JwksTiming {
            ttl: Duration::from_secs(3600),
            min_refetch: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

impl TokenVerifier {
    /// A verifier for `config`'s keys. Errors name the config key at fault: a PEM that
    /// holds no public key (or a private one), a key of the wrong type or an unsupported
    /// size or curve, a JWKS URL that is not `http(s)://`, a JWKS endpoint together with
    /// static keys.
    pub fn new(config: &TokenConfig) -> Result<Self, ConfigError> {
        Self::build(config, JwksTiming::default(), volley::tls::default_client_config())
    }

    fn build(config: &TokenConfig, timing: JwksTiming, tls: Arc<ClientConfig>) -> Result<Self, ConfigError> {
        let hmac = non_empty(&config.hmac_secret_key).map(|secret| DecodingKey::from_secret(secret.as_bytes()));
        let hmac_previous =
            match (non_empty(&config.hmac_previous_secret_key), config.hmac_previous_secret_key_valid_until) {
                (None, _) => None,
                (Some(_), None | Some(0)) => return Err(ConfigError::new(
                    "hmac_previous_secret_key_valid_until",
                    "required with hmac_previous_secret_key: the time (Unix seconds) from which its tokens are refused",
                )),
                (Some(_), Some(_)) if hmac.is_none() => {
                    return Err(ConfigError::new("hmac_previous_secret_key", "set without hmac_secret_key"))
                }
                (Some(secret), Some(until)) => Some((DecodingKey::from_secret(secret.as_bytes()), until)),
            };

        let mut keys = Vec::new();
        let pem_keys = [
            ("rsa_public_key", &config.rsa_public_key, KeyType::Rsa),
            ("ecdsa_public_key", &config.ecdsa_public_key, KeyType::Ec),
            ("ed25519_public_key", &config.ed25519_public_key, KeyType::Ed25519),
        ];
        for (name, pem, expected) in pem_keys {
            if let Some(pem) = non_empty(pem) {
                keys.push(key_from_pem(pem, expected).map_err(|reason| ConfigError::new(name, reason))?);
            }
        }

        let jwks = match non_empty(&config.jwks_public_endpoint) {
            None => None,
            Some(_) if hmac.is_some() || !keys.is_empty() => {
                return Err(ConfigError::new(
                    "jwks_public_endpoint",
                    "set together with hmac_secret_key or a public key: with a JWKS endpoint every token is \
                     verified with its keys only, so the other keys would never be used; remove them",
                ))
            }
            Some(url) => {
                let endpoint =
                    Endpoint::parse(url).map_err(|reason| ConfigError::new("jwks_public_endpoint", reason))?;
                Some(Jwks::new(endpoint, timing, tls))
            }
        };

        let user_id_claim = match non_empty(&config.user_id_claim) {
            None => None,
            Some(path) => {
                let segments: Vec<String> = path.split('.').map(str::to_string).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(ConfigError::new("user_id_claim", format!("{path:?} has an empty segment")));
                }
                Some(segments)
            }
        };

        Ok(TokenVerifier {
            inner: Arc::new(Inner {
                hmac,
                hmac_previous,
                keys,
                jwks,
                audience: non_empty(&config.audience).map(str::to_string),
                issuer: non_empty(&config.issuer).map(str::to_string),
                user_id_claim,
            }),
        })
    }

    /// Verifies a connection token and returns its claims. A token with a `channel` claim
    /// is refused (that claim makes a subscription token).
    pub async fn verify_connect(&self, token: &str) -> Result<ConnectToken, TokenError> {
        let raw = self.verified_claims(token).await?;
        let registered: Registered = parse_claims(&raw)?;
        let claims: ConnectClaims = parse_claims(&raw)?;
        self.check_audience_and_issuer(&registered)?;
        if claims.channel.as_deref().is_some_and(|c| !c.is_empty()) {
            return Err(invalid("a connection token has a `channel` claim: only subscription tokens have one"));
        }
        check_time(&registered)?;

        let subs = match claims.subs {
            Some(subs) if !subs.is_empty() => subs
                .into_iter()
                .map(|(channel, sub)| Ok((channel, sub.into_options()?)))
                .collect::<Result<_, TokenError>>()?,
            _ => claims.channels.iter().flatten().map(|c| (c.clone(), SubscribeOptions::default())).collect(),
        };
        Ok(ConnectToken {
            user: self.user(&registered, &raw)?,
            expire_at: expire_at(claims.expire_at, registered.exp.as_ref()),
            issued_at: registered.iat.as_ref().and_then(unix_seconds),
            jti: registered.jti,
            info: raw_or_base64(claims.info, claims.b64info, "b64info")?,
            channels: claims.channels.unwrap_or_default(),
            subs,
            meta: claims.meta.as_deref().map(raw_bytes),
        })
    }

    /// Verifies a subscription token and returns its claims; `channel` is required. Check
    /// the result against the subscription with [`SubscribeToken::check`].
    pub async fn verify_subscribe(&self, token: &str) -> Result<SubscribeToken, TokenError> {
        let raw = self.verified_claims(token).await?;
        let registered: Registered = parse_claims(&raw)?;
        let claims: SubscribeClaims = parse_claims(&raw)?;
        self.check_audience_and_issuer(&registered)?;
        check_time(&registered)?;
        let channel = claims
            .channel
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid("no `channel` claim: a subscription token names the channel it is for"))?;
        let options = SubClaims {
            info: claims.info,
            b64info: claims.b64info,
            data: claims.data,
            b64data: claims.b64data,
            overrides: claims.overrides,
        }
        .into_options()?;
        Ok(SubscribeToken {
            channel,
            user: self.user(&registered, &raw)?,
            client: claims.client.filter(|c| !c.is_empty()),
            expire_at: expire_at(claims.expire_at, registered.exp.as_ref()),
            issued_at: registered.iat.as_ref().and_then(unix_seconds),
            jti: registered.jti,
            options,
        })
    }

    /// The token's claims, a JSON object's text, once its signature is verified.
    async fn verified_claims(&self, token: &str) -> Result<Box<RawValue>, TokenError> {
        let raw = self.verify_signature(token).await?;
        if !raw.get().trim_start().starts_with('{') {
            return Err(invalid("the claims are not a JSON object"));
        }
        Ok(raw)
    }

    /// The token's payload as JSON text, once its signature is verified with the key its
    /// algorithm (or `kid`) calls for.
    async fn verify_signature(&self, token: &str) -> Result<Box<RawValue>, TokenError> {
        if token.is_empty() {
            return Err(invalid("empty token"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("malformed header: {e}")))?;
        let alg = header.alg;
        let inner = &*self.inner;

        if let Some(jwks) = &inner.jwks {
            let kid = header.kid.as_deref().filter(|kid| !kid.is_empty()).ok_or_else(|| {
                invalid("no `kid` in the header, and keys come from the JWKS endpoint by their `kid`")
            })?;
            let key = jwks.key(kid).await?;
            if !key.algorithms.contains(&alg) {
                return Err(invalid(format!("JWKS key {kid:?} does not verify {alg:?} tokens")));
            }
            return decode(token, &key.decoding, alg).map_err(token_error);
        }

        if HMAC_ALGORITHMS.contains(&alg) {
            let key = inner.hmac.as_ref().ok_or_else(|| not_accepted(alg))?;
            return match decode(token, key, alg) {
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => match &inner.hmac_previous {
                    Some((previous, until)) if unix_now_ms() < until.saturating_mul(1000) as i128 => {
                        decode(token, previous, alg).map_err(token_error)
                    }
                    _ => Err(token_error(e)),
                },
                other => other.map_err(token_error),
            };
        }

        let key = inner.keys.iter().find(|key| key.algorithms.contains(&alg)).ok_or_else(|| not_accepted(alg))?;
        decode(token, &key.decoding, alg).map_err(token_error)
    }

    fn check_audience_and_issuer(&self, registered: &Registered) -> Result<(), TokenError> {
        if let Some(audience) = &self.inner.audience {
            let holds = match &registered.aud {
                Some(Audience::One(aud)) => aud == audience,
                Some(Audience::Many(auds)) => auds.iter().any(|aud| aud == audience),
                None => false,
            };
            if !holds {
                return Err(invalid(format!("the audience (`aud`) is not {audience:?}")));
            }
        }
        if let Some(issuer) = &self.inner.issuer {
            if registered.iss.as_deref() != Some(issuer.as_str()) {
                return Err(invalid(format!("the issuer (`iss`) is not {issuer:?}")));
            }
        }
        Ok(())
    }

    fn user(&self, registered: &Registered, raw: &RawValue) -> Result<String, TokenError> {
        let Some(path) = &self.inner.user_id_claim else {
            return Ok(registered.sub.clone().unwrap_or_default());
        };
        let claims: serde_json::Value = parse_claims(raw)?;
        let mut value = &claims;
        for segment in path {
            match value.get(segment) {
                Some(inner) => value = inner,
                None => return Ok(String::new()),
            }
        }
        Ok(match value {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

fn not_accepted(alg: Algorithm) -> TokenError {
    invalid(format!("{alg:?} tokens are not accepted: no key for them is configured"))
}

/// Verifies the signature with `key` for `alg`, and nothing else (times, audience and
/// issuer are checked afterwards, Centrifugo's way), and returns the claims' JSON text.
fn decode(token: &str, key: &DecodingKey, alg: Algorithm) -> jsonwebtoken::errors::Result<Box<RawValue>> {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Box<RawValue>>(token, key, &validation).map(|data| data.claims)
}

fn token_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => invalid("bad signature"),
        ErrorKind::InvalidAlgorithm => invalid("the algorithm does not match the key"),
        ErrorKind::Json(e) => invalid(format!("malformed claims: {e}")),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => invalid(format!("malformed token: {e}")),
        _ => invalid(e.to_string()),
    }
}

fn parse_claims<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Result<T, TokenError> {
    serde_json::from_str(raw.get()).map_err(|e| invalid(format!("malformed claims: {e}")))
}

/// The registered claims (RFC 7519) both kinds of token use.
#[derive(Deserialize)]
struct Registered {
    sub: Option<String>,
    exp: Option<Number>,
    nbf: Option<Number>,
    iat: Option<Number>,
    jti: Option<String>,
    aud: Option<Audience>,
    iss: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ConnectClaims {
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    channels: Option<Vec<String>>,
    subs: Option<BTreeMap<String, SubClaims>>,
    meta: Option<Box<RawValue>>,
    expire_at: Option<i64>,
    channel: Option<String>,
}

#[derive(Deserialize)]
struct SubscribeClaims {
    channel: Option<String>,
    client: Option<String>,
    expire_at: Option<i64>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(rename = "override")]
    overrides: Option<OverrideClaims>,
}

/// A server-side subscription's options, as a token's `subs` (or a connect proxy's
/// answer) gives them.
#[derive(Deserialize)]
pub(crate) struct SubClaims {
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(rename = "override")]
    overrides: Option<OverrideClaims>,
}

#[derive(Deserialize)]
struct OverrideClaims {
    presence: Option<BoolValue>,
    join_leave: Option<BoolValue>,
    force_push_join_leave: Option<BoolValue>,
    force_recovery: Option<BoolValue>,
    force_positioning: Option<BoolValue>,
}

/// `{"value": true}`.
#[derive(Deserialize)]
struct BoolValue {
    #[serde(default)]
    value: bool,
}

impl SubClaims {
    pub(crate) fn into_options(self) -> Result<SubscribeOptions, TokenError> {
        let overrides = self.overrides.map_or_else(SubscribeOverrides::default, |o| SubscribeOverrides {
            presence: o.presence.map(|b| b.value),
            join_leave: o.join_leave.map(|b| b.value),
            force_push_join_leave: o.force_push_join_leave.map(|b| b.value),
            force_recovery: o.force_recovery.map(|b| b.value),
            force_positioning: o.force_positioning.map(|b| b.value),
        });
        Ok(SubscribeOptions {
            info: raw_or_base64(self.info, self.b64info, "b64info")?,
            data: raw_or_base64(self.data, self.b64data, "b64data")?,
            overrides,
        })
    }
}

pub(crate) fn raw_bytes(raw: &RawValue) -> Bytes {
    Bytes::copy_from_slice(raw.get().as_bytes())
}

/// A JSON claim's text, or its base64 twin decoded, which wins when set (as Centrifugo).
pub(crate) fn raw_or_base64(
    raw: Option<Box<RawValue>>,
    b64: Option<String>,
    name: &str,
) -> Result<Option<Bytes>, TokenError> {
    match b64.filter(|s| !s.is_empty()) {
        Some(b64) => {
            let bytes = STANDARD.decode(b64).map_err(|e| invalid(format!("`{name}` is not base64: {e}")))?;
            Ok(Some(Bytes::from(bytes)))
        }
        None => Ok(raw.as_deref().map(raw_bytes)),
    }
}

/// Milliseconds since the Unix epoch (wide enough for any NumericDate in a token).
fn unix_now_ms() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i128)
}

/// A NumericDate (seconds, maybe with a fraction) in milliseconds.
fn numeric_date_ms(n: &Number) -> i128 {
    if let Some(i) = n.as_i64() {
        i as i128 * 1000
    } else if let Some(u) = n.as_u64() {
        u as i128 * 1000
    } else {
        // A float: the cast saturates, and NaN cannot come from JSON.
        (n.as_f64().unwrap_or(0.0) * 1000.0) as i128
    }
}

/// A NumericDate in whole Unix seconds, if after the epoch.
fn unix_seconds(n: &Number) -> Option<u64> {
    let seconds = numeric_date_ms(n).div_euclid(1000);
    u64::try_from(seconds).ok().filter(|&s| s > 0)
}

/// `exp` must be after now, `nbf` not after now; both refusals are "expired", as in
/// Centrifugo, so that the client asks for a new token.
fn check_time(registered: &Registered) -> Result<(), TokenError> {
    let now = unix_now_ms();
    if registered.exp.as_ref().is_some_and(|exp| numeric_date_ms(exp) <= now) {
        return Err(TokenError::Expired);
    }
    if registered.nbf.as_ref().is_some_and(|nbf| numeric_date_ms(nbf) > now) {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// When the connection or subscription expires: `expire_at` when present (0 or less:
/// never), otherwise `exp`.
fn expire_at(expire_at: Option<i64>, exp: Option<&Number>) -> Option<u64> {
    match expire_at {
        Some(at) => u64::try_from(at).ok().filter(|&at| at > 0),
        None => exp.and_then(unix_seconds),
    }
}

// ---- Public keys from PEM -------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyType {
    Rsa,
    Ec,
    Ed25519,
}

impl KeyType {
    fn describe(self) -> &'static str {
        match self {
            KeyType::Rsa => "an RSA key",
            KeyType::Ec => "an ECDSA key",
            KeyType::Ed25519 => "an Ed25519 key",
        }
    }
}

/// A public key read from a SubjectPublicKeyInfo.
#[derive(Debug, PartialEq, Eq)]
enum PublicKey {
    /// The PKCS#1 `RSAPublicKey`.
    Rsa(Vec<u8>),
    /// The uncompressed point (`04 || x || y`) and the one algorithm its curve signs.
    Ec(Vec<u8>, Algorithm),
    /// The 32 bytes of the key.
    Ed25519(Vec<u8>),
}

impl PublicKey {
    fn key_type(&self) -> KeyType {
        match self {
            PublicKey::Rsa(_) => KeyType::Rsa,
            PublicKey::Ec(..) => KeyType::Ec,
            PublicKey::Ed25519(_) => KeyType::Ed25519,
        }
    }
}

fn key_from_pem(pem_text: &str, expected: KeyType) -> Result<Key, String> {
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem_text.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound if pem_text.contains("PRIVATE KEY-----") => {
            "this is a private key: give its public key (`openssl pkey -in key.pem -pubout`)".to_string()
        }
        pem::Error::NoItemsFound if pem_text.contains("BEGIN RSA PUBLIC KEY-----") => {
            "a PKCS#1 `RSA PUBLIC KEY`: give it as a `PUBLIC KEY` (`openssl rsa -RSAPublicKey_in -in key.pem -pubout`)"
                .to_string()
        }
        pem::Error::NoItemsFound => {
            "no `-----BEGIN PUBLIC KEY-----` block (a SubjectPublicKeyInfo, as `openssl pkey -pubout` writes)"
                .to_string()
        }
        e => format!("malformed PEM: {e}"),
    })?;
    let public = parse_spki(spki.as_ref())?;
    if public.key_type() != expected {
        return Err(format!("this is {}, not {}", public.key_type().describe(), expected.describe()));
    }
    Ok(match public {
        PublicKey::Rsa(pkcs1) => {
            let (n, _) = rsa_components(&pkcs1)?;
            check_rsa_size(n)?;
            Key { decoding: DecodingKey::from_rsa_der(&pkcs1), algorithms: RSA_ALGORITHMS.to_vec() }
        }
        PublicKey::Ec(point, alg) => Key { decoding: DecodingKey::from_ec_der(&point), algorithms: vec![alg] },
        PublicKey::Ed25519(key) => Key { decoding: DecodingKey::from_ed_der(&key), algorithms: vec![Algorithm::EdDSA] },
    })
}

/// DER reading, just enough for a SubjectPublicKeyInfo and an `RSAPublicKey`.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The contents of the next element, which must have `tag`.
    fn read(&mut self, tag: u8) -> Result<&'a [u8], String> {
        let truncated = || "truncated DER".to_string();
        let (&found, rest) = self.0.split_first().ok_or_else(truncated)?;
        if found != tag {
            return Err(format!("malformed DER: tag {found:#04x} where {tag:#04x} was expected"));
        }
        let (&first, mut rest) = rest.split_first().ok_or_else(truncated)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err("malformed DER length".to_string());
            }
            let len = rest[..n].iter().fold(0usize, |len, &b| (len << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return Err(truncated());
        }
        let (contents, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(contents)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];

fn parse_spki(der: &[u8]) -> Result<PublicKey, String> {
    let mut outer = Der(der);
    let mut spki = Der(outer.read(0x30)?);
    let mut algorithm = Der(spki.read(0x30)?);
    let bits = spki.read(0x03)?;
    let oid = algorithm.read(0x06)?;
    let key = match bits.split_first() {
        Some((0, key)) => key.to_vec(),
        _ => return Err("malformed DER: the key's BIT STRING".to_string()),
    };
    match oid {
        OID_RSA => Ok(PublicKey::Rsa(key)),
        OID_EC => {
            let (alg, len) = match algorithm.read(0x06)? {
                OID_P256 => (Algorithm::ES256, 32),
                OID_P384 => (Algorithm::ES384, 48),
                OID_P521 => {
                    return Err("P-521 keys (ES512) are not supported: use P-256 (ES256) or P-384 (ES384)".into())
                }
                _ => return Err("an EC key on a curve other than P-256 and P-384".to_string()),
            };
            if key.len() != 1 + 2 * len || key[0] != 0x04 {
                return Err("the EC key is not an uncompressed point of its curve".to_string());
            }
            Ok(PublicKey::Ec(key, alg))
        }
        OID_ED25519 if key.len() == 32 => Ok(PublicKey::Ed25519(key)),
        OID_ED25519 => Err("an Ed25519 key that is not 32 bytes".to_string()),
        OID_ED448 => Err("Ed448 keys are not supported: use Ed25519".to_string()),
        _ => Err("a public key of an unsupported type (RSA, EC P-256/P-384 and Ed25519 are)".to_string()),
    }
}

/// The modulus and exponent of a PKCS#1 `RSAPublicKey`, without leading zeros.
fn rsa_components(pkcs1: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let mut outer = Der(pkcs1);
    let mut key = Der(outer.read(0x30)?);
    let n = key.read(0x02)?;
    let e = key.read(0x02)?;
    if !outer.is_empty() || !key.is_empty() {
        return Err("malformed RSA public key: trailing data".to_string());
    }
    Ok((strip_zeros(n), strip_zeros(e)))
}

fn strip_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

/// What *ring* verifies: 2048 to 8192 bits.
fn check_rsa_size(modulus: &[u8]) -> Result<(), String> {
    let bits = match modulus.first() {
        Some(&first) => (modulus.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    };
    if !(2048..=8192).contains(&bits) {
        return Err(format!("an RSA key of {bits} bits: 2048 to 8192 are supported"));
    }
    Ok(())
}

// ---- JWKS -----------------------------------------------------------------------------

/// The largest JWK set read, and the most keys taken from it.
const MAX_JWKS_BYTES: usize = 1 << 20;
const MAX_JWKS_KEYS: usize = 256;

/// The keys of a JWKS endpoint, fetched when first needed, used for `ttl`, and fetched
/// again when a token names a key the set does not hold, at most every `min_refetch`.
struct Jwks {
    endpoint: Endpoint,
    timing: JwksTiming,
    tls: Arc<ClientConfig>,
    state: RwLock<JwksState>,
    /// Held while fetching, so that concurrent misses make one request.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, Arc<Key>>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
    last_error: Option<String>,
}

impl Jwks {
    fn new(endpoint: Endpoint, timing: JwksTiming, tls: Arc<ClientConfig>) -> Jwks {
        Jwks { endpoint, timing, tls, state: RwLock::default(), fetching: tokio::sync::Mutex::new(()) }
    }

    fn fresh(&self, state: &JwksState) -> bool {
        state.fetched_at.is_some_and(|at| at.elapsed() < self.timing.ttl)
    }

    /// The key `kid` from a set fetched less than `ttl` ago.
    fn cached(&self, kid: &str) -> Option<Arc<Key>> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if self.fresh(&state) {
            state.keys.get(kid).cloned()
        } else {
            None
        }
    }

    async fn key(&self, kid: &str) -> Result<Arc<Key>, TokenError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let _fetching = self.fetching.lock().await;
        // Another task may have fetched the set while this one waited.
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            if state.attempted_at.is_some_and(|at| at.elapsed() < self.timing.min_refetch) {
                // Too soon to ask again: answer from the last attempt.
                return Err(match &state.last_error {
                    Some(reason) => TokenError::KeysUnavailable(reason.clone()),
                    None if self.fresh(&state) => invalid(format!("no key {kid:?} in the JWK set")),
                    None => TokenError::KeysUnavailable("the JWK set is out of date".to_string()),
                });
            }
            state.attempted_at = Some(Instant::now());
        }

        let fetched = match tokio::time::timeout(self.timing.timeout, fetch(&self.endpoint, &self.tls)).await {
            Ok(Ok(body)) => parse_jwks(&body),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {:?}", self.timing.timeout)),
        };
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match fetched {
            Ok(keys) => {
                tracing::debug!(url = %self.endpoint.url, keys = keys.len(), "JWK set fetched");
                state.keys = keys;
                state.fetched_at = Some(Instant::now());
                state.last_error = None;
                state.keys.get(kid).cloned().ok_or_else(|| invalid(format!("no key {kid:?} in the JWK set")))
            }
            Err(e) => {
                let reason = format!("{}: {e}", self.endpoint.url);
                tracing::warn!("JWK set not fetched: {reason}");
                state.last_error = Some(reason.clone());
                Err(TokenError::KeysUnavailable(reason))
            }
        }
    }
}

/// GETs the JWK set: the body of a 200 answer.
async fn fetch(endpoint: &Endpoint, tls: &Arc<ClientConfig>) -> Result<Bytes, String> {
    let request = Request::get(endpoint, &[("accept", "application/json")]);
    let (status, body) = request.send(tls, MAX_JWKS_BYTES).await?;
    if status != http::StatusCode::OK {
        return Err(format!("answered {status}"));
    }
    Ok(body)
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// The signing keys of a JWK set by `kid`. Keys this verifier cannot use (no `kid`, `use`
/// other than `sig`, symmetric, unsupported curves, malformed) are skipped, not fatal: a
/// set may hold keys for other purposes.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<Key>>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys.into_iter().take(MAX_JWKS_KEYS) {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::debug!("JWK skipped: {e}");
                continue;
            }
        };
        let Some(kid) = jwk.kid.clone().filter(|kid| !kid.is_empty()) else { continue };
        if jwk.usage.as_deref().is_some_and(|usage| usage != "sig") {
            continue;
        }
        match key_from_jwk(&jwk) {
            Ok(key) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(e) => tracing::debug!(kid = %kid, "JWK skipped: {e}"),
        }
    }
    Ok(keys)
}

fn key_from_jwk(jwk: &Jwk) -> Result<Key, String> {
    let field = |value: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let value = value.as_deref().ok_or_else(|| format!("no `{name}`"))?;
        URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')).map_err(|e| format!("`{name}` is not base64url: {e}"))
    };
    let mut key = match jwk.kty.as_str() {
        "RSA" => {
            let (n, e) = (field(&jwk.n, "n")?, field(&jwk.e, "e")?);
            let n = strip_zeros(&n);
            check_rsa_size(n)?;
            Key {
                decoding: DecodingKey::from_rsa_raw_components(n, strip_zeros(&e)),
                algorithms: RSA_ALGORITHMS.to_vec(),
            }
        }
        "EC" => {
            let (alg, len) = match jwk.crv.as_deref() {
                Some("P-256") => (Algorithm::ES256, 32),
                Some("P-384") => (Algorithm::ES384, 48),
                other => return Err(format!("curve {other:?} is not supported")),
            };
            let (x, y) = (field(&jwk.x, "x")?, field(&jwk.y, "y")?);
            if x.len() != len || y.len() != len {
                return Err("`x` or `y` is not of its curve's size".to_string());
            }
            let point: Vec<u8> = [&[0x04][..], &x, &y].concat();
            Key { decoding: DecodingKey::from_ec_der(&point), algorithms: vec![alg] }
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(format!("curve {:?} is not supported", jwk.crv));
            }
            let x = field(&jwk.x, "x")?;
            if x.len() != 32 {
                return Err("`x` is not 32 bytes".to_string());
            }
            Key { decoding: DecodingKey::from_ed_der(&x), algorithms: vec![Algorithm::EdDSA] }
        }
        other => return Err(format!("key type {other:?} is not used for token signatures")),
    };
    if let Some(alg) = jwk.alg.as_deref() {
        let alg: Algorithm = alg.parse().map_err(|_| format!("algorithm {alg:?} is not supported"))?;
        if !key.algorithms.contains(&alg) {
            return Err(format!("algorithm {alg:?} does not fit a {} key", jwk.kty));
        }
        key.algorithms = vec![alg];
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use jsonwebtoken::{EncodingKey, Header};
    use rustls_pki_types::{PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};
    use serde_json::json;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa_public.pem");
    const RSA2_PUBLIC: &str = include_str!("../tests/keys/rsa2_public.pem");
    const RSA1024_PUBLIC: &str = include_str!("../tests/keys/rsa1024_public.pem");
    const EC256_PRIVATE: &str = include_str!("../tests/keys/ec256_private.pem");
    const EC256_PUBLIC: &str = include_str!("../tests/keys/ec256_public.pem");
    const EC384_PRIVATE: &str = include_str!("../tests/keys/ec384_private.pem");
    const EC384_PUBLIC: &str = include_str!("../tests/keys/ec384_public.pem");
    const EC521_PUBLIC: &str = include_str!("../tests/keys/ec521_public.pem");
    const ED_PRIVATE: &str = include_str!("../tests/keys/ed25519_private.pem");
    const ED_PUBLIC: &str = include_str!("../tests/keys/ed25519_public.pem");
    const SECRET: &str = "a secret long enough for HMAC";

    fn rsa_signer() -> EncodingKey {
        let der = PrivatePkcs1KeyDer::from_pem_slice(RSA_PRIVATE.as_bytes()).unwrap();
        EncodingKey::from_rsa_der(der.secret_pkcs1_der())
    }

    fn pkcs8(pem: &str) -> Vec<u8> {
        PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap().secret_pkcs8_der().to_vec()
    }

    fn ec256_signer() -> EncodingKey {
        EncodingKey::from_ec_der(&pkcs8(EC256_PRIVATE))
    }

    fn ec384_signer() -> EncodingKey {
        EncodingKey::from_ec_der(&pkcs8(EC384_PRIVATE))
    }

    fn ed_signer() -> EncodingKey {
        EncodingKey::from_ed_der(&pkcs8(ED_PRIVATE))
    }

    fn hmac_signer() -> EncodingKey {
        EncodingKey::from_secret(SECRET.as_bytes())
    }

    /// A token of `claims` (any serializable value; a `RawValue` keeps its exact text).
    fn sign(alg: Algorithm, key: &EncodingKey, claims: &impl serde::Serialize) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn sign_kid(alg: Algorithm, key: &EncodingKey, kid: &str, claims: &impl serde::Serialize) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn now() -> i64 {
        (unix_now_ms() / 1000) as i64
    }

    fn config() -> TokenConfig {
        TokenConfig {
            hmac_secret_key: Some(SECRET.into()),
            rsa_public_key: Some(RSA_PUBLIC.into()),
            ecdsa_public_key: Some(EC256_PUBLIC.into()),
            ed25519_public_key: Some(ED_PUBLIC.into()),
            ..TokenConfig::default()
        }
    }

    fn verifier(config: &TokenConfig) -> TokenVerifier {
        TokenVerifier::new(config).unwrap()
    }

    fn is_invalid<T: fmt::Debug>(result: Result<T, TokenError>) -> bool {
        matches!(result, Err(TokenError::Invalid(_)))
    }

    fn b64url(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[tokio::test]
    async fn every_algorithm_verifies_with_its_key() {
        let v = verifier(&config());
        let claims = json!({"sub": "42", "exp": now() + 600});
        let signers: Vec<(Algorithm, EncodingKey)> = vec![
            (Algorithm::HS256, hmac_signer()),
            (Algorithm::HS384, hmac_signer()),
            (Algorithm::HS512, hmac_signer()),
            (Algorithm::RS256, rsa_signer()),
            (Algorithm::RS384, rsa_signer()),
            (Algorithm::RS512, rsa_signer()),
            (Algorithm::PS256, rsa_signer()),
            (Algorithm::PS384, rsa_signer()),
            (Algorithm::PS512, rsa_signer()),
            (Algorithm::ES256, ec256_signer()),
            (Algorithm::EdDSA, ed_signer()),
        ];
        for (alg, key) in &signers {
            let token = sign(*alg, key, &claims);
            let connect = v.verify_connect(&token).await.unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(connect.user, "42", "{alg:?}");
            let sub = sign(*alg, key, &json!({"sub": "42", "channel": "$room"}));
            assert_eq!(v.verify_subscribe(&sub).await.unwrap().channel, "$room", "{alg:?}");
        }

        // A P-384 key verifies ES384, and then ES256 is not accepted.
        let v384 = verifier(&TokenConfig { ecdsa_public_key: Some(EC384_PUBLIC.into()), ..TokenConfig::default() });
        let token = sign(Algorithm::ES384, &ec384_signer(), &claims);
        assert_eq!(v384.verify_connect(&token).await.unwrap().user, "42");
        let es256 = sign(Algorithm::ES256, &ec256_signer(), &claims);
        assert!(is_invalid(v384.verify_connect(&es256).await));
        assert!(is_invalid(v.verify_connect(&token).await), "ES384 with only a P-256 key");
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let v = verifier(&config());
        let payload = b64url(br#"{"sub":"42"}"#);
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#, r#"{"typ":"JWT"}"#, r#"{"alg":"HS1"}"#] {
            for signature in ["", "c2lnbmF0dXJl"] {
                let token = format!("{}.{payload}.{signature}", b64url(header.as_bytes()));
                assert!(is_invalid(v.verify_connect(&token).await), "{header} {signature:?}");
                assert!(is_invalid(v.verify_subscribe(&token).await), "{header} {signature:?}");
            }
        }
    }

    #[tokio::test]
    async fn wrong_key_or_signature_is_refused() {
        let v = verifier(&config());
        let claims = json!({"sub": "42"});
        let other_secret = EncodingKey::from_secret(b"another secret");
        assert!(is_invalid(v.verify_connect(&sign(Algorithm::HS256, &other_secret, &claims)).await));

        // The RSA token checked against another RSA key.
        let other_rsa = verifier(&TokenConfig { rsa_public_key: Some(RSA2_PUBLIC.into()), ..TokenConfig::default() });
        let token = sign(Algorithm::RS256, &rsa_signer(), &claims);
        assert!(v.verify_connect(&token).await.is_ok());
        assert_eq!(other_rsa.verify_connect(&token).await, Err(invalid("bad signature")));

        // A payload swapped under a valid signature.
        let forged_payload = b64url(br#"{"sub":"admin"}"#);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(v.verify_connect(&forged).await, Err(invalid("bad signature")));
        // One bit of the signature flipped.
        let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        signature[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], b64url(&signature));
        assert!(is_invalid(v.verify_connect(&flipped).await));
    }

    #[tokio::test]
    async fn algorithm_confusion_is_refused() {
        // Only an RSA key: an HS256 token "signed" with the public key's PEM (the classic
        // confusion attack) is refused, and so are ECDSA and EdDSA tokens.
        let v = verifier(&TokenConfig { rsa_public_key: Some(RSA_PUBLIC.into()), ..TokenConfig::default() });
        let claims = json!({"sub": "42"});
        let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()), &claims);
        assert!(is_invalid(v.verify_connect(&confused).await));
        assert!(is_invalid(v.verify_connect(&sign(Algorithm::ES256, &ec256_signer(), &claims)).await));
        assert!(is_invalid(v.verify_connect(&sign(Algorithm::EdDSA, &ed_signer(), &claims)).await));

        // Only an HMAC secret: RSA tokens are refused.
        let v = verifier(&TokenConfig { hmac_secret_key: Some(SECRET.into()), ..TokenConfig::default() });
        assert!(is_invalid(v.verify_connect(&sign(Algorithm::RS256, &rsa_signer(), &claims)).await));

        // No key at all: everything is refused.
        let v = verifier(&TokenConfig::default());
        assert!(is_invalid(v.verify_connect(&sign(Algorithm::HS256, &hmac_signer(), &claims)).await));
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid_tokens() {
        let v = verifier(&config());
        let key = hmac_signer();
        let token = |claims: serde_json::Value| sign(Algorithm::HS256, &key, &claims);
        assert_eq!(v.verify_connect(&token(json!({"sub": "1", "exp": now() - 10}))).await, Err(TokenError::Expired));
        assert_eq!(v.verify_connect(&token(json!({"sub": "1", "exp": now()}))).await, Err(TokenError::Expired));
        assert_eq!(
            v.verify_subscribe(&token(json!({"channel": "c", "exp": now() - 1}))).await,
            Err(TokenError::Expired)
        );
        assert_eq!(v.verify_connect(&token(json!({"sub": "1", "nbf": now() + 60}))).await, Err(TokenError::Expired));
        // Fractional NumericDates are accepted.
        let t = now();
        let fine = v.verify_connect(&token(json!({"sub": "1", "exp": t as f64 + 60.5, "nbf": t - 1}))).await;
        assert_eq!(fine.unwrap().expire_at, Some(t as u64 + 60));
        // The signature is checked first: an expired token with a bad signature is
        // invalid, not expired.
        let expired = token(json!({"sub": "1", "exp": now() - 10}));
        let (message, signature) = expired.rsplit_once('.').unwrap();
        let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        signature[0] ^= 0x80;
        assert!(is_invalid(v.verify_connect(&format!("{message}.{}", b64url(&signature))).await));
        // `exp` of the wrong type.
        assert!(is_invalid(v.verify_connect(&token(json!({"sub": "1", "exp": "tomorrow"}))).await));
    }

    #[tokio::test]
    async fn connect_claims_are_kept() {
        let v = verifier(&config());
        let info = r#"{"name":  "Ann",   "tags":[1, 2.50, "é"]}"#;
        let meta = r#"{"plan": "pro"}"#;
        let exp = now() + 600;
        let text = format!(
            r#"{{"sub":"42","exp":{exp},"iat":1700000000,"jti":"t-1","info":{info},"meta":{meta},
                "channels":["news","$private"],"unknown":{{"anything":[true]}}}}"#
        );
        let claims: Box<RawValue> = serde_json::from_str(&text).unwrap();
        let token = v.verify_connect(&sign(Algorithm::HS256, &hmac_signer(), &claims)).await.unwrap();
        assert_eq!(token.user, "42");
        assert_eq!(token.info.as_deref(), Some(info.as_bytes()), "info byte for byte");
        assert_eq!(token.meta.as_deref(), Some(meta.as_bytes()));
        assert_eq!(token.expire_at, Some(exp as u64));
        assert_eq!(token.issued_at, Some(1_700_000_000));
        assert_eq!(token.jti.as_deref(), Some("t-1"));
        assert_eq!(token.channels, ["news", "$private"]);
        assert_eq!(token.subs.keys().collect::<Vec<_>>(), ["$private", "news"]);
        assert!(token.subs.values().all(|options| *options == SubscribeOptions::default()));

        // `b64info` wins over `info`; `subs` wins over `channels`; `expire_at` over `exp`.
        let text = r#"{"sub":"","info":{"x":1},"b64info":"AAEC/w==","channels":["ignored"],"expire_at":1900000000,
            "subs":{"a":{"info":{"i":1},"data":{"welcome":true},"override":{"presence":{"value":false},
            "join_leave":{"value":true},"force_recovery":{"value":true},"force_positioning":{},
            "force_push_join_leave":{"value":true}}},"b":{"b64info":"aGk=","b64data":"AP8="}}}"#;
        let claims: Box<RawValue> = serde_json::from_str(text).unwrap();
        let token = v.verify_connect(&sign(Algorithm::ES256, &ec256_signer(), &claims)).await.unwrap();
        assert_eq!(token.user, "", "an empty sub is an anonymous user");
        assert_eq!(token.info.as_deref(), Some(&[0u8, 1, 2, 255][..]));
        assert_eq!(token.expire_at, Some(1_900_000_000));
        assert_eq!(token.channels, ["ignored"]);
        assert_eq!(token.subs.len(), 2);
        let a = &token.subs["a"];
        assert_eq!(a.info.as_deref(), Some(&br#"{"i":1}"#[..]));
        assert_eq!(a.data.as_deref(), Some(&br#"{"welcome":true}"#[..]));
        assert_eq!(
            a.overrides,
            SubscribeOverrides {
                presence: Some(false),
                join_leave: Some(true),
                force_push_join_leave: Some(true),
                force_recovery: Some(true),
                force_positioning: Some(false),
            }
        );
        let b = &token.subs["b"];
        assert_eq!((b.info.as_deref(), b.data.as_deref()), (Some(&b"hi"[..]), Some(&[0u8, 255][..])));
        assert_eq!(b.overrides, SubscribeOverrides::default());
    }

    #[tokio::test]
    async fn expire_at_decides_the_connection_expiry() {
        let v = verifier(&config());
        let key = hmac_signer();
        let expiry = |claims: serde_json::Value| {
            let token = sign(Algorithm::HS256, &key, &claims);
            let v = v.clone();
            async move { v.verify_connect(&token).await.unwrap().expire_at }
        };
        let exp = now() + 600;
        assert_eq!(expiry(json!({"sub": "1"})).await, None, "no exp: never");
        assert_eq!(expiry(json!({"sub": "1", "exp": exp})).await, Some(exp as u64));
        assert_eq!(expiry(json!({"sub": "1", "exp": exp, "expire_at": 0})).await, None, "0: never");
        assert_eq!(expiry(json!({"sub": "1", "exp": exp, "expire_at": exp + 5})).await, Some(exp as u64 + 5));
        // `expire_at` in the past does not make the token expired (`exp` decides that): the
        // connection is refused by its expiry.
        assert_eq!(expiry(json!({"sub": "1", "expire_at": 1000})).await, Some(1000));
    }

    #[tokio::test]
    async fn malformed_claims_are_invalid() {
        let v = verifier(&config());
        let key = hmac_signer();
        for claims in [
            json!({"sub": 42}),
            json!({"sub": "1", "channels": "news"}),
            json!({"sub": "1", "channels": [1]}),
            json!({"sub": "1", "subs": ["a"]}),
            json!({"sub": "1", "b64info": "not base64!"}),
            json!({"sub": "1", "subs": {"a": {"b64data": "%%%"}}}),
            json!({"sub": "1", "expire_at": "soon"}),
            json!({"sub": "1", "channel": "a connection token never has one"}),
            json!(["not", "an", "object"]),
            json!("text"),
        ] {
            let token = sign(Algorithm::HS256, &key, &claims);
            assert!(is_invalid(v.verify_connect(&token).await), "{claims}");
        }
        for claims in [
            json!({"sub": "1"}),
            json!({"sub": "1", "channel": ""}),
            json!({"channel": 5}),
            json!({"channel": "c", "b64info": "***"}),
        ] {
            let token = sign(Algorithm::HS256, &key, &claims);
            assert!(is_invalid(v.verify_subscribe(&token).await), "{claims}");
        }
    }

    #[tokio::test]
    async fn malformed_tokens_are_invalid() {
        let v = verifier(&config());
        let good = sign(Algorithm::HS256, &hmac_signer(), &json!({"sub": "1"}));
        let (header, rest) = good.split_once('.').unwrap();
        for token in [
            "".to_string(),
            "abc".to_string(),
            "a.b".to_string(),
            "a.b.c".to_string(),
            "..".to_string(),
            format!("{good}.extra"),
            format!("{header}.!!!.{}", rest.split_once('.').unwrap().1),
            format!("{header}.{}.sig", b64url(b"not json")),
            "é.é.é".to_string(),
        ] {
            assert!(is_invalid(v.verify_connect(&token).await), "{token:?}");
        }
    }

    #[tokio::test]
    async fn subscription_claims_and_check() {
        let v = verifier(&config());
        let text = r#"{"sub":"42","channel":"$chat:1","client":"c-1","exp":4000000000,"expire_at":0,
            "info":{"role":"mod"},"b64data":"AQI=","override":{"presence":{"value":true}}}"#;
        let claims: Box<RawValue> = serde_json::from_str(text).unwrap();
        let token = v.verify_subscribe(&sign(Algorithm::RS256, &rsa_signer(), &claims)).await.unwrap();
        assert_eq!(token.channel, "$chat:1");
        assert_eq!(token.user, "42");
        assert_eq!(token.client.as_deref(), Some("c-1"));
        assert_eq!(token.expire_at, None, "expire_at 0: the subscription does not expire");
        assert_eq!(token.options.info.as_deref(), Some(&br#"{"role":"mod"}"#[..]));
        assert_eq!(token.options.data.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(token.options.overrides.presence, Some(true));

        assert_eq!(token.check("$chat:1", "42", "c-1"), Ok(()));
        assert!(matches!(token.check("$chat:2", "42", "c-1"), Err(TokenError::Invalid(r)) if r.contains("$chat:1")));
        assert!(is_invalid(token.check("$chat:1", "43", "c-1")));
        assert!(is_invalid(token.check("$chat:1", "42", "c-2")));
        // Without `client`, any connection of the user may use it.
        let token = v.verify_subscribe(&sign(Algorithm::HS256, &hmac_signer(), &json!({"channel": "x"}))).await;
        let token = token.unwrap();
        assert_eq!((token.user.as_str(), token.client.as_deref(), token.expire_at), ("", None, None));
        assert_eq!(token.check("x", "", "any"), Ok(()));
    }

    #[tokio::test]
    async fn audience_issuer_and_user_id_claim() {
        let config = TokenConfig {
            audience: Some("hub".into()),
            issuer: Some("https://app.example".into()),
            user_id_claim: Some("user.id".into()),
            ..config()
        };
        let v = verifier(&config);
        let key = hmac_signer();
        let check = |claims: serde_json::Value| {
            let token = sign(Algorithm::HS256, &key, &claims);
            let v = v.clone();
            async move { v.verify_connect(&token).await }
        };
        let iss = "https://app.example";
        let token = check(json!({"aud": "hub", "iss": iss, "sub": "ignored", "user": {"id": 7}})).await.unwrap();
        assert_eq!(token.user, "7");
        let token = check(json!({"aud": ["other", "hub"], "iss": iss, "user": {"id": "u"}})).await.unwrap();
        assert_eq!(token.user, "u");
        assert_eq!(check(json!({"aud": "hub", "iss": iss})).await.unwrap().user, "", "no such claim: anonymous");
        assert!(is_invalid(check(json!({"iss": iss})).await), "no aud");
        assert!(is_invalid(check(json!({"aud": "other", "iss": iss})).await));
        assert!(is_invalid(check(json!({"aud": ["a", "b"], "iss": iss})).await));
        assert!(is_invalid(check(json!({"aud": "hub"})).await), "no iss");
        assert!(is_invalid(check(json!({"aud": "hub", "iss": "https://evil.example"})).await));
        // Subscription tokens are checked the same way.
        let sub = sign(Algorithm::HS256, &key, &json!({"aud": "hub", "iss": iss, "channel": "c", "user": {"id": "u"}}));
        assert_eq!(v.verify_subscribe(&sub).await.unwrap().user, "u");
        let sub = sign(Algorithm::HS256, &key, &json!({"aud": "x", "iss": iss, "channel": "c"}));
        assert!(is_invalid(v.verify_subscribe(&sub).await));
        // Without the settings, aud and iss are not looked at.
        let plain = verifier(&self::config());
        let token = sign(Algorithm::HS256, &key, &json!({"sub": "1", "aud": "anything", "iss": "anyone"}));
        assert_eq!(plain.verify_connect(&token).await.unwrap().user, "1");
    }

    #[tokio::test]
    async fn previous_hmac_secret_until_its_deadline() {
        let previous = EncodingKey::from_secret(b"the previous secret");
        let token = sign(Algorithm::HS256, &previous, &json!({"sub": "1"}));
        let config = |until: u64| TokenConfig {
            hmac_secret_key: Some(SECRET.into()),
            hmac_previous_secret_key: Some("the previous secret".into()),
            hmac_previous_secret_key_valid_until: Some(until),
            ..TokenConfig::default()
        };
        let during = verifier(&config(now() as u64 + 3600));
        assert_eq!(during.verify_connect(&token).await.unwrap().user, "1");
        let current = sign(Algorithm::HS512, &hmac_signer(), &json!({"sub": "2"}));
        assert_eq!(during.verify_connect(&current).await.unwrap().user, "2");
        let after = verifier(&config(now() as u64 - 1));
        assert_eq!(after.verify_connect(&token).await, Err(invalid("bad signature")));
        assert!(verifier(&TokenConfig { hmac_secret_key: Some(SECRET.into()), ..TokenConfig::default() })
            .verify_connect(&token)
            .await
            .is_err());
    }

    #[test]
    fn config_errors_name_the_key() {
        let error = |config: TokenConfig| TokenVerifier::new(&config).unwrap_err();
        let rsa = |pem: &str| TokenConfig { rsa_public_key: Some(pem.into()), ..TokenConfig::default() };

        let e = error(rsa("not a key"));
        assert_eq!(e.key, "rsa_public_key");
        assert!(e.reason.contains("BEGIN PUBLIC KEY"), "{e}");
        assert!(error(rsa(RSA_PRIVATE)).reason.contains("private key"));
        let truncated = RSA_PUBLIC.replacen("MII", "MIIB", 1);
        assert_eq!(error(rsa(&truncated)).key, "rsa_public_key");
        assert!(error(rsa(RSA1024_PUBLIC)).reason.contains("1024 bits"), "{}", error(rsa(RSA1024_PUBLIC)));
        assert!(error(rsa(EC256_PUBLIC)).reason.contains("ECDSA"));

        let ec = |pem: &str| TokenConfig { ecdsa_public_key: Some(pem.into()), ..TokenConfig::default() };
        let e = error(ec(EC521_PUBLIC));
        assert_eq!(e.key, "ecdsa_public_key");
        assert!(e.reason.contains("P-521"), "{e}");
        assert!(error(ec(RSA_PUBLIC)).reason.contains("RSA"));
        let ed = TokenConfig { ed25519_public_key: Some(EC256_PUBLIC.into()), ..TokenConfig::default() };
        assert_eq!(error(ed).key, "ed25519_public_key");

        let jwks = |url: &str| TokenConfig { jwks_public_endpoint: Some(url.into()), ..TokenConfig::default() };
        for url in ["ftp://keys.example/jwks", "not a url", "https://user:pw@keys.example/", "/jwks.json"] {
            assert_eq!(error(jwks(url)).key, "jwks_public_endpoint", "{url}");
        }
        let both = TokenConfig { hmac_secret_key: Some(SECRET.into()), ..jwks("https://keys.example/jwks.json") };
        assert_eq!(error(both).key, "jwks_public_endpoint");
        assert!(TokenVerifier::new(&jwks("https://keys.example/.well-known/jwks.json")).is_ok());

        let previous = TokenConfig {
            hmac_secret_key: Some(SECRET.into()),
            hmac_previous_secret_key: Some("old".into()),
            ..TokenConfig::default()
        };
        assert_eq!(error(previous).key, "hmac_previous_secret_key_valid_until");
        let claim = TokenConfig { user_id_claim: Some("user..id".into()), ..TokenConfig::default() };
        assert_eq!(error(claim).key, "user_id_claim");

        // Empty strings are absent keys (as from an empty environment variable).
        let empty = TokenConfig { rsa_public_key: Some(String::new()), audience: Some(String::new()), ..config() };
        assert!(TokenVerifier::new(&empty).is_ok());
    }

    #[test]
    fn config_reads_centrifugo_key_names_and_hides_secrets() {
        let config: TokenConfig = serde_json::from_value(json!({
            "hmac_secret_key": "s3cr3t",
            "rsa_public_key": RSA_PUBLIC,
            "audience": "hub",
            "issuer": "app",
            "user_id_claim": "uid",
        }))
        .unwrap();
        assert_eq!(config.hmac_secret_key.as_deref(), Some("s3cr3t"));
        assert_eq!(config.audience.as_deref(), Some("hub"));
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let verifier = TokenVerifier::new(&config).unwrap();
        assert!(!format!("{verifier:?}").contains("s3cr3t"));
        let unknown = serde_json::from_value::<TokenConfig>(json!({"hmac_secret": "typo"})).unwrap_err();
        assert!(unknown.to_string().contains("hmac_secret"), "{unknown}");
        let jwks: TokenConfig = serde_json::from_value(json!({"jwks_public_endpoint": "https://k/jwks"})).unwrap();
        assert_eq!(jwks.jwks_public_endpoint.as_deref(), Some("https://k/jwks"));
    }

    // ---- JWKS ------------------------------------------------------------------------

    /// A JWKS endpoint on 127.0.0.1: it answers every request with the current status and
    /// body, and counts the requests and keeps the last request line.
    struct JwksServer {
        port: u16,
        answer: Arc<Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
        last_request_line: Arc<Mutex<String>>,
    }

    impl JwksServer {
        async fn start(tls: Option<volley::tls::TlsAcceptor>) -> JwksServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = JwksServer {
                port,
                answer: Arc::new(Mutex::new((200, r#"{"keys":[]}"#.to_string()))),
                hits: Arc::new(AtomicUsize::new(0)),
                last_request_line: Arc::new(Mutex::new(String::new())),
            };
            let (answer, hits, line) = (server.answer.clone(), server.hits.clone(), server.last_request_line.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (answer, hits, line, tls) = (answer.clone(), hits.clone(), line.clone(), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(tcp).await {
                                    respond(stream, &answer, &hits, &line).await;
                                }
                            }
                            None => respond(tcp, &answer, &hits, &line).await,
                        }
                    });
                }
            });
            server
        }

        fn set(&self, status: u16, body: String) {
            *self.answer.lock().unwrap() = (status, body);
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        answer: &Mutex<(u16, String)>,
        hits: &AtomicUsize,
        line: &Mutex<String>,
    ) {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        hits.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&request);
        *line.lock().unwrap() = text.lines().next().unwrap_or_default().to_string();
        let (status, body) = answer.lock().unwrap().clone();
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn spki(pem: &str) -> PublicKey {
        parse_spki(SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref()).unwrap()
    }

    fn rsa_jwk(pem: &str, kid: &str) -> serde_json::Value {
        let PublicKey::Rsa(pkcs1) = spki(pem) else { panic!("not RSA") };
        let (n, e) = rsa_components(&pkcs1).unwrap();
        json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64url(n), "e": b64url(e)})
    }

    fn ec_jwk(pem: &str, kid: &str) -> serde_json::Value {
        let PublicKey::Ec(point, alg) = spki(pem) else { panic!("not EC") };
        let half = (point.len() - 1) / 2;
        let crv = if alg == Algorithm::ES256 { "P-256" } else { "P-384" };
        json!({"kty": "EC", "kid": kid, "crv": crv, "x": b64url(&point[1..=half]), "y": b64url(&point[1 + half..])})
    }

    fn ed_jwk(pem: &str, kid: &str) -> serde_json::Value {
        let PublicKey::Ed25519(x) = spki(pem) else { panic!("not Ed25519") };
        json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64url(&x)})
    }

    fn jwk_set(keys: &[serde_json::Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    fn jwks_verifier(url: String, timing: JwksTiming) -> TokenVerifier {
        let config = TokenConfig { jwks_public_endpoint: Some(url), ..TokenConfig::default() };
        TokenVerifier::build(&config, timing, volley::tls::default_client_config()).unwrap()
    }

    #[tokio::test]
    async fn jwks_keys_by_kid_with_cache_and_rate_limited_refetch() {
        let server = JwksServer::start(None).await;
        let mut rs = rsa_jwk(RSA_PUBLIC, "rsa-1");
        rs["alg"] = json!("RS256");
        server.set(
            200,
            jwk_set(&[
                rs,
                ec_jwk(EC256_PUBLIC, "ec-1"),
                ed_jwk(ED_PUBLIC, "ed-1"),
                json!({"kty": "oct", "kid": "hmac", "k": b64url(SECRET.as_bytes())}),
                json!({"kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB"}),
                json!({"kty": "EC", "kid": "bad", "crv": "P-256", "x": "AA", "y": "AA"}),
                json!({"no": "kty"}),
            ]),
        );
        let timing = JwksTiming { min_refetch: Duration::from_secs(2), ..JwksTiming::default() };
        let v = jwks_verifier(format!("http://127.0.0.1:{}/.well-known/jwks.json?v=1", server.port), timing);
        let claims = json!({"sub": "42", "exp": now() + 600});

        let signers = [
            (Algorithm::RS256, rsa_signer(), "rsa-1"),
            (Algorithm::ES256, ec256_signer(), "ec-1"),
            (Algorithm::EdDSA, ed_signer(), "ed-1"),
        ];
        for (alg, key, kid) in &signers {
            let token = sign_kid(*alg, key, kid, &claims);
            assert_eq!(v.verify_connect(&token).await.unwrap().user, "42", "{kid}");
        }
        assert_eq!(server.hits(), 1, "one fetch serves every key");
        assert_eq!(*server.last_request_line.lock().unwrap(), "GET /.well-known/jwks.json?v=1 HTTP/1.1");

        // The JWK's `alg` restricts its key: PS256 with the RS256 key is refused.
        assert!(is_invalid(v.verify_connect(&sign_kid(Algorithm::PS256, &rsa_signer(), "rsa-1", &claims)).await));
        // HS256 "signed" with the RSA key's public PEM, naming the RSA key.
        let confused = sign_kid(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()), "rsa-1", &claims);
        assert!(is_invalid(v.verify_connect(&confused).await));
        // A token without a kid, and a kid naming a key of another type.
        assert!(is_invalid(v.verify_connect(&sign(Algorithm::RS256, &rsa_signer(), &claims)).await));
        assert!(is_invalid(v.verify_connect(&sign_kid(Algorithm::EdDSA, &ed_signer(), "ec-1", &claims)).await));
        // Symmetric keys from the endpoint are never used, nor `use: enc` or broken keys:
        // their kids are unknown, and right after a fetch no new request is made for them.
        let hs = sign_kid(Algorithm::HS256, &hmac_signer(), "hmac", &claims);
        assert!(is_invalid(v.verify_connect(&hs).await));
        for kid in ["enc-1", "bad", "rsa-2"] {
            assert!(is_invalid(v.verify_connect(&sign_kid(Algorithm::RS256, &rsa_signer(), kid, &claims)).await));
        }
        assert_eq!(server.hits(), 1, "rate limited");

        // A key rotation: once the interval has passed, an unknown kid fetches the set.
        server.set(200, jwk_set(&[rsa_jwk(RSA_PUBLIC, "rsa-2")]));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let rotated = sign_kid(Algorithm::RS256, &rsa_signer(), "rsa-2", &claims);
        assert_eq!(v.verify_connect(&rotated).await.unwrap().user, "42");
        assert_eq!(server.hits(), 2);
        // The new set replaced the old one; and right after, no new request.
        assert!(is_invalid(v.verify_connect(&sign_kid(Algorithm::EdDSA, &ed_signer(), "ed-1", &claims)).await));
        assert!(is_invalid(v.verify_connect(&sign_kid(Algorithm::RS256, &rsa_signer(), "rsa-3", &claims)).await));
        assert_eq!(server.hits(), 2);
        // Subscription tokens go through the same keys.
        let sub = sign_kid(Algorithm::RS512, &rsa_signer(), "rsa-2", &json!({"sub": "42", "channel": "c"}));
        assert_eq!(v.verify_subscribe(&sub).await.unwrap().channel, "c");
    }

    #[tokio::test]
    async fn jwks_cache_expires_and_failures_are_unavailable() {
        let server = JwksServer::start(None).await;
        server.set(500, "oops".to_string());
        let timing = JwksTiming {
            ttl: Duration::from_secs(1),
            min_refetch: Duration::from_millis(300),
            ..JwksTiming::default()
        };
        let v = jwks_verifier(format!("http://127.0.0.1:{}/jwks", server.port), timing);
        let claims = json!({"sub": "1"});
        let token = sign_kid(Algorithm::ES256, &ec256_signer(), "k", &claims);

        let first = v.verify_connect(&token).await;
        assert!(matches!(&first, Err(TokenError::KeysUnavailable(r)) if r.contains("500")), "{first:?}");
        // Within the interval the failure is remembered, not retried.
        assert!(matches!(v.verify_connect(&token).await, Err(TokenError::KeysUnavailable(_))));
        assert_eq!(server.hits(), 1);

        tokio::time::sleep(Duration::from_millis(350)).await;
        server.set(200, "not json".to_string());
        assert!(
            matches!(v.verify_connect(&token).await, Err(TokenError::KeysUnavailable(r)) if r.contains("not a JWK set"))
        );

        tokio::time::sleep(Duration::from_millis(350)).await;
        server.set(200, jwk_set(&[ec_jwk(EC256_PUBLIC, "k")]));
        assert_eq!(v.verify_connect(&token).await.unwrap().user, "1");
        assert_eq!(v.verify_connect(&token).await.unwrap().user, "1");
        assert_eq!(server.hits(), 3, "cached");

        // After the TTL the set is fetched again; a key gone from it is refused.
        server.set(200, jwk_set(&[]));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(is_invalid(v.verify_connect(&token).await));
        assert_eq!(server.hits(), 4);

        // An endpoint that does not answer at all.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let v = jwks_verifier(format!("http://127.0.0.1:{port}/jwks"), timing);
        assert!(
            matches!(v.verify_connect(&token).await, Err(TokenError::KeysUnavailable(r)) if r.contains("connecting"))
        );
    }

    #[tokio::test]
    async fn jwks_concurrent_misses_make_one_request() {
        let server = JwksServer::start(None).await;
        server.set(200, jwk_set(&[ed_jwk(ED_PUBLIC, "ed")]));
        let v = jwks_verifier(format!("http://127.0.0.1:{}/", server.port), JwksTiming::default());
        let token = sign_kid(Algorithm::EdDSA, &ed_signer(), "ed", &json!({"sub": "1"}));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (v, token) = (v.clone(), token.clone());
                tokio::spawn(async move { v.verify_connect(&token).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().user, "1");
        }
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn jwks_over_https() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        let server_key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let acceptor =
            volley::tls::TlsAcceptor::from(volley::tls::server_config(vec![cert.der().clone()], server_key).unwrap());

        let server = JwksServer::start(Some(acceptor)).await;
        server.set(200, jwk_set(&[rsa_jwk(RSA_PUBLIC, "r")]));
        let mut roots = volley::tls::rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let config = TokenConfig {
            jwks_public_endpoint: Some(format!("https://localhost:{}/keys", server.port)),
            ..TokenConfig::default()
        };
        let v = TokenVerifier::build(&config, JwksTiming::default(), volley::tls::client_config(roots)).unwrap();
        let token = sign_kid(Algorithm::RS256, &rsa_signer(), "r", &json!({"sub": "tls"}));
        assert_eq!(v.verify_connect(&token).await.unwrap().user, "tls");
        assert_eq!(*server.last_request_line.lock().unwrap(), "GET /keys HTTP/1.1");

        // The default roots do not trust the test CA: the certificate check fails.
        let v = TokenVerifier::new(&config).unwrap();
        let result = v.verify_connect(&token).await;
        assert!(matches!(&result, Err(TokenError::KeysUnavailable(r)) if r.contains("TLS")), "{result:?}");
    }
}
