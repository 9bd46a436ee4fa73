//! The keys tokens are verified with, each bound to the one algorithm it may verify.
//!
//! A key's algorithm comes from configuration (the caller names it, or a JWKS entry states
//! or implies it), never from a token: that is what defeats algorithm confusion, where a
//! token says `HS256` and is "signed" with the bytes of the RSA public key.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as the
/// hash output (32 bytes).
pub const HS256_SECRET_LEN_MIN_BYTES: usize = 32;
/// The largest key document (PEM or JWKS) accepted.
pub const KEY_DOCUMENT_LEN_MAX_BYTES: usize = 64 * 1024;
/// The most keys one verifier holds (a JWKS beyond this is refused, not truncated).
pub const KEYS_MAX: usize = 32;

/// The signature algorithms edgechat verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// HMAC with SHA-256, a secret shared with the application.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// The algorithm's name in a JOSE header (`alg`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    /// The algorithm called `name` in a JOSE header, if edgechat verifies it.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        [
            Algorithm::Hs256,
            Algorithm::Rs256,
            Algorithm::Es256,
            Algorithm::EdDsa,
        ]
        .into_iter()
        .find(|alg| alg.name() == name)
    }

    pub(super) fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// Why a key could not be loaded (a configuration error, reported at startup).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The HS256 secret is shorter than [`HS256_SECRET_LEN_MIN_BYTES`].
    #[error("the HS256 secret must be at least {HS256_SECRET_LEN_MIN_BYTES} bytes")]
    SecretTooShort,
    /// HS256 takes a secret, not a PEM document.
    #[error("HS256 takes a shared secret, not a PEM key")]
    PemForHmac,
    /// The PEM document is not a public key of the named algorithm.
    #[error("the PEM document is not a valid {0} public key")]
    BadPem(&'static str),
    /// The JWKS document is not `{"keys": [...]}`.
    #[error("the JWKS document is not valid JSON of the form {{\"keys\": [...]}}")]
    BadJwks,
    /// The JWKS document holds no RS256, ES256 or EdDSA signing key.
    #[error("the JWKS document holds no usable signing key (RS256, ES256 or EdDSA)")]
    NoUsableKey,
    /// The document is longer than [`KEY_DOCUMENT_LEN_MAX_BYTES`] or holds more than
    /// [`KEYS_MAX`] keys.
    #[error("the key document is too large")]
    TooLarge,
}

/// One key, with the only algorithm it verifies and its key id.
#[derive(Clone)]
pub(super) struct VerifyingKey {
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

/// The keys a [`TokenVerifier`](super::TokenVerifier) accepts signatures from.
///
/// Build one with [`VerifyingKeys::hs256`], [`VerifyingKeys::from_pem`] or
/// [`VerifyingKeys::from_jwks`]; [`VerifyingKeys::merge`] joins several (a key rotation).
/// The `Debug` form never shows key material.
#[derive(Clone)]
pub struct VerifyingKeys {
    pub(super) keys: Vec<VerifyingKey>,
}

impl std::fmt::Debug for VerifyingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<(Option<&str>, &str)> = self
            .keys
            .iter()
            .map(|key| (key.kid.as_deref(), key.algorithm.name()))
            .collect();
        f.debug_struct("VerifyingKeys")
            .field("keys", &keys)
            .finish()
    }
}

impl VerifyingKeys {
    /// A shared HS256 secret (the raw bytes, not base64).
    ///
    /// # Errors
    /// [`KeyError::SecretTooShort`] below [`HS256_SECRET_LEN_MIN_BYTES`].
    pub fn hs256(secret: &[u8]) -> Result<VerifyingKeys, KeyError> {
        if secret.len() < HS256_SECRET_LEN_MIN_BYTES {
            return Err(KeyError::SecretTooShort);
        }
        Ok(VerifyingKeys::one(
            None,
            Algorithm::Hs256,
            DecodingKey::from_secret(secret),
        ))
    }

    /// A public key in PEM (`-----BEGIN PUBLIC KEY-----`, or `RSA PUBLIC KEY` for RS256)
    /// that verifies `algorithm`. Tokens with or without a `kid` may use it.
    ///
    /// # Errors
    /// [`KeyError::PemForHmac`] for HS256, [`KeyError::BadPem`] if the document is not a
    /// public key of that algorithm, [`KeyError::TooLarge`] beyond
    /// [`KEY_DOCUMENT_LEN_MAX_BYTES`].
    pub fn from_pem(algorithm: Algorithm, pem: &[u8]) -> Result<VerifyingKeys, KeyError> {
        if pem.len() > KEY_DOCUMENT_LEN_MAX_BYTES {
            return Err(KeyError::TooLarge);
        }
        let bad = |_| KeyError::BadPem(algorithm.name());
        let key = match algorithm {
            Algorithm::Hs256 => return Err(KeyError::PemForHmac),
            Algorithm::Rs256 => DecodingKey::from_rsa_pem(pem).map_err(bad)?,
            Algorithm::Es256 => DecodingKey::from_ec_pem(pem).map_err(bad)?,
            Algorithm::EdDsa => DecodingKey::from_ed_pem(pem).map_err(bad)?,
        };
        check_public_pem(algorithm, pem)?;
        Ok(VerifyingKeys::one(None, algorithm, key))
    }

    /// The signing keys of a JWKS document (RFC 7517), as an identity provider publishes it.
    ///
    /// Each key verifies the algorithm its `alg` names, or else the one its type implies
    /// (`RSA`: RS256, `EC` on P-256: ES256, `OKP` Ed25519: EdDSA). Keys marked
    /// `"use": "enc"`, symmetric (`oct`) keys, other algorithms and entries that do not
    /// parse are skipped, so one exotic key does not break a provider's whole set.
    ///
    /// # Errors
    /// [`KeyError::BadJwks`] if it is not a JWKS, [`KeyError::NoUsableKey`] if nothing is
    /// left, [`KeyError::TooLarge`] beyond the bounds.
    pub fn from_jwks(json: &str) -> Result<VerifyingKeys, KeyError> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<serde_json::Value>,
        }
        if json.len() > KEY_DOCUMENT_LEN_MAX_BYTES {
            return Err(KeyError::TooLarge);
        }
        let jwks: Jwks = serde_json::from_str(json).map_err(|_| KeyError::BadJwks)?;
        if jwks.keys.len() > KEYS_MAX {
            return Err(KeyError::TooLarge);
        }
        let keys: Vec<VerifyingKey> = jwks
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| jwk_key(&jwk))
            .collect();
        if keys.is_empty() {
            return Err(KeyError::NoUsableKey);
        }
        Ok(VerifyingKeys { keys })
    }

    /// These keys and `other`'s, for a rotation (old and new key both verify for a while).
    ///
    /// # Errors
    /// [`KeyError::TooLarge`] beyond [`KEYS_MAX`] keys.
    pub fn merge(mut self, other: VerifyingKeys) -> Result<VerifyingKeys, KeyError> {
        self.keys.extend(other.keys);
        if self.keys.len() > KEYS_MAX {
            return Err(KeyError::TooLarge);
        }
        Ok(self)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (never true for a value built by this module's constructors).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, in configuration order (`None` for a key without one).
    pub fn key_ids(&self) -> impl Iterator<Item = Option<&str>> {
        self.keys.iter().map(|key| key.kid.as_deref())
    }

    fn one(kid: Option<String>, algorithm: Algorithm, key: DecodingKey) -> VerifyingKeys {
        VerifyingKeys {
            keys: vec![VerifyingKey {
                kid,
                algorithm,
                key,
            }],
        }
    }
}

/// `jsonwebtoken` accepts a private key document where a public key is expected for some
/// algorithms; a verifier's configuration should only ever hold public keys.
fn check_public_pem(algorithm: Algorithm, pem: &[u8]) -> Result<(), KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| KeyError::BadPem(algorithm.name()))?;
    if text.contains("PRIVATE KEY-----") {
        return Err(KeyError::BadPem(algorithm.name()));
    }
    Ok(())
}

/// The verifying key of one JWKS entry, if it is a signing key edgechat supports.
fn jwk_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::Rs256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::Es256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDsa
        }
        _ => return None,
    };
    let stated = match jwk.common.key_algorithm {
        None => implied,
        Some(KeyAlgorithm::RS256) => Algorithm::Rs256,
        Some(KeyAlgorithm::ES256) => Algorithm::Es256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDsa,
        Some(_) => return None,
    };
    if stated != implied {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        algorithm: stated,
        key,
    })
}
