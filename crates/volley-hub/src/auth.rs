//! Tokens: connection and subscription JWTs, their keys (HMAC, RSA, ECDSA, EdDSA, JWKS)
//! and the claims the clients use.
//!
//! Not built yet.
