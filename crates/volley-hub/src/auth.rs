//! Tokens: connection and subscription JWTs, their keys (HMAC, RSA, ECDSA, EdDSA, JWKS)
//! and the claims the clients use.
//!
//! Not built yet: every token is refused.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How tokens are verified.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// The HMAC secret (HS256, HS384, HS512).
    pub hmac_secret_key: Option<String>,
}

/// A token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Its `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Anything else.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A bad token configuration.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Verifies tokens.
#[derive(Clone, Debug)]
pub struct TokenVerifier;

/// A connection token's claims.
#[derive(Clone, Debug, Default)]
pub struct ConnectToken {
    /// `sub`.
    pub user: String,
    /// When the connection expires (Unix seconds).
    pub expire_at: Option<u64>,
    /// `info`, raw JSON.
    pub info: Option<Bytes>,
    /// `channels`.
    pub channels: Vec<String>,
    /// `subs`.
    pub subs: BTreeMap<String, serde_json::Value>,
}

/// A subscription token's claims.
#[derive(Clone, Debug, Default)]
pub struct SubscribeToken {
    /// `sub`.
    pub user: String,
    /// `channel`.
    pub channel: String,
    /// When the subscription expires (Unix seconds).
    pub expire_at: Option<u64>,
    /// `info`, raw JSON.
    pub info: Option<Bytes>,
}

impl TokenVerifier {
    /// A verifier.
    pub fn new(_config: &TokenConfig) -> Result<Self, ConfigError> {
        Ok(TokenVerifier)
    }

    /// Verifies a connection token.
    pub async fn verify_connect(&self, _token: &str) -> Result<ConnectToken, TokenError> {
        Err(TokenError::Invalid("no key".into()))
    }

    /// Verifies a subscription token.
    pub async fn verify_subscribe(&self, _token: &str) -> Result<SubscribeToken, TokenError> {
        Err(TokenError::Invalid("no key".into()))
    }
}
