//! Token verification, modes, grants and origins, against committed test keys
//! (`testdata/README.md` says how they were made).

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::ids::{IdSecret, Namespace, ObjectId};
use crate::Timestamp;

const SECRET: &[u8] = b"a test secret of at least 32 bytes!!";
const RSA_PRIVATE: &[u8] = include_bytes!("testdata/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("testdata/rsa_public.pem");
const RSA2_PRIVATE: &[u8] = include_bytes!("testdata/rsa2_private.pem");
const EC_PRIVATE: &[u8] = include_bytes!("testdata/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("testdata/ec_public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("testdata/ed_private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("testdata/ed_public.pem");
const JWKS: &str = include_str!("testdata/jwks.json");

/// "Now" in the tests: 2023-11-14T22:13:20Z.
const NOW_SECS: u64 = 1_700_000_000;
const NOW: Timestamp = Timestamp(NOW_SECS * 1_000);

fn lobby() -> ObjectId {
    ObjectId::from_name(Namespace::Room, "lobby")
}

fn claims() -> Value {
    json!({
        "sub": "user-42",
        "name": "Ada",
        "exp": NOW_SECS + 600,
        "rooms": { "lobby": "write", "news": "read" },
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let (jwt_alg, key) = match alg {
        Algorithm::Hs256 => (
            jsonwebtoken::Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
        ),
        Algorithm::Rs256 => (
            jsonwebtoken::Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        ),
        Algorithm::Es256 => (
            jsonwebtoken::Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        ),
        Algorithm::EdDsa => (
            jsonwebtoken::Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
        ),
    };
    let mut header = Header::new(jwt_alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

fn hs_verifier() -> TokenVerifier {
    TokenVerifier::new(VerifyingKeys::hs256(SECRET).unwrap())
}

fn pem_verifier(alg: Algorithm) -> TokenVerifier {
    let pem = match alg {
        Algorithm::Rs256 => RSA_PUBLIC,
        Algorithm::Es256 => EC_PUBLIC,
        Algorithm::EdDsa => ED_PUBLIC,
        Algorithm::Hs256 => return hs_verifier(),
    };
    TokenVerifier::new(VerifyingKeys::from_pem(alg, pem).unwrap())
}

fn jwks_verifier() -> TokenVerifier {
    TokenVerifier::new(VerifyingKeys::from_jwks(JWKS).unwrap())
}

/// A token with any header and payload, and `signature` as its third part.
fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap());
    format!("{}.{}.{signature}", part(header), part(claims))
}

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Hs256,
    Algorithm::Rs256,
    Algorithm::Es256,
    Algorithm::EdDsa,
];

#[test]
fn every_algorithm_verifies_with_its_key() {
    for alg in ALGORITHMS {
        let verified = pem_verifier(alg)
            .verify(&sign(alg, None, &claims()), NOW)
            .unwrap_or_else(|error| panic!("{alg:?}: {error}"));
        assert_eq!(verified.sub, "user-42");
        assert_eq!(verified.name.as_str(), "Ada");
        assert_eq!(verified.grants.role_for(&lobby()), Some(Role::Write));
        assert_eq!(
            verified.expires_at,
            Some(Timestamp((NOW_SECS + 600) * 1_000 + LEEWAY_MS_DEFAULT))
        );
    }
}

#[test]
fn jwks_picks_the_key_by_kid() {
    let verifier = jwks_verifier();
    assert_eq!(
        verifier.keys().key_ids().collect::<Vec<_>>(),
        vec![Some("rsa-1"), Some("ec-1"), Some("ed-1")],
        "the encryption key is skipped"
    );
    for (alg, kid) in [
        (Algorithm::Rs256, "rsa-1"),
        (Algorithm::Es256, "ec-1"),
        (Algorithm::EdDsa, "ed-1"),
    ] {
        let token = sign(alg, Some(kid), &claims());
        assert!(verifier.verify(&token, NOW).is_ok(), "{kid}");
    }
    // Without a kid, every key of the token's algorithm is tried.
    let token = sign(Algorithm::Es256, None, &claims());
    assert!(verifier.verify(&token, NOW).is_ok());
    let cases = [
        (
            sign(Algorithm::Rs256, Some("nope"), &claims()),
            AuthError::UnknownKey,
        ),
        (
            sign(Algorithm::Rs256, Some("rsa-enc"), &claims()),
            AuthError::UnknownKey,
        ),
        // The right kid with another algorithm: the key decides.
        (
            sign(Algorithm::EdDsa, Some("rsa-1"), &claims()),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            sign(Algorithm::Hs256, None, &claims()),
            AuthError::AlgorithmNotAllowed,
        ),
    ];
    for (token, expected) in cases {
        assert_eq!(verifier.verify(&token, NOW), Err(expected));
    }
}

#[test]
fn key_configuration_errors() {
    assert_eq!(
        VerifyingKeys::hs256(&SECRET[..31]).unwrap_err(),
        KeyError::SecretTooShort
    );
    assert_eq!(
        VerifyingKeys::from_pem(Algorithm::Hs256, RSA_PUBLIC).unwrap_err(),
        KeyError::PemForHmac
    );
    assert_eq!(
        VerifyingKeys::from_pem(Algorithm::Rs256, RSA_PRIVATE).unwrap_err(),
        KeyError::BadPem("RS256")
    );
    assert_eq!(
        VerifyingKeys::from_pem(Algorithm::Rs256, b"not pem").unwrap_err(),
        KeyError::BadPem("RS256")
    );
    assert_eq!(
        VerifyingKeys::from_jwks("[]").unwrap_err(),
        KeyError::BadJwks
    );
    assert_eq!(
        VerifyingKeys::from_jwks(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err(),
        KeyError::NoUsableKey
    );
    let many = json!({ "keys": vec![json!({}); KEYS_MAX + 1] }).to_string();
    assert_eq!(
        VerifyingKeys::from_jwks(&many).unwrap_err(),
        KeyError::TooLarge
    );
    let rotated = VerifyingKeys::hs256(SECRET)
        .unwrap()
        .merge(VerifyingKeys::from_jwks(JWKS).unwrap())
        .unwrap();
    assert_eq!(rotated.len(), 4);
    assert!(
        !format!("{rotated:?}").contains("AQAB"),
        "Debug shows no key material"
    );
}

#[test]
fn alg_none_is_refused() {
    for alg in ["none", "None", "NONE", "HS512", "PS256", ""] {
        let token = forge(&json!({ "alg": alg, "typ": "JWT" }), &claims(), "");
        for verifier in [
            hs_verifier(),
            pem_verifier(Algorithm::Rs256),
            jwks_verifier(),
        ] {
            assert_eq!(
                verifier.verify(&token, NOW),
                Err(AuthError::AlgorithmNotAllowed),
                "{alg}"
            );
        }
    }
}

#[test]
fn algorithm_confusion_is_refused() {
    // An HMAC token whose secret is the RSA public key, as an attacker who read it would make.
    let header = Header::new(jsonwebtoken::Algorithm::HS256);
    for public in [RSA_PUBLIC, EC_PUBLIC, ED_PUBLIC] {
        let token = encode(&header, &claims(), &EncodingKey::from_secret(public)).unwrap();
        for alg in [Algorithm::Rs256, Algorithm::Es256, Algorithm::EdDsa] {
            assert_eq!(
                pem_verifier(alg).verify(&token, NOW),
                Err(AuthError::AlgorithmNotAllowed)
            );
        }
    }
    // And the other way: an RS256 token presented to an HS256 verifier.
    assert_eq!(
        hs_verifier().verify(&sign(Algorithm::Rs256, None, &claims()), NOW),
        Err(AuthError::AlgorithmNotAllowed)
    );
}

#[test]
fn a_foreign_key_or_a_tampered_part_is_a_bad_signature() {
    let foreign = encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(RSA2_PRIVATE).unwrap(),
    )
    .unwrap();
    assert_eq!(
        pem_verifier(Algorithm::Rs256).verify(&foreign, NOW),
        Err(AuthError::BadSignature)
    );
    // Claims swapped under a valid signature: a grant upgraded to moderator.
    let token = sign(Algorithm::Hs256, None, &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut upgraded = claims();
    upgraded["rooms"]["lobby"] = json!("moderator");
    let swapped = forge(&json!({"alg": "HS256", "typ": "JWT"}), &upgraded, parts[2]);
    assert_eq!(
        hs_verifier().verify(&swapped, NOW),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn malformed_tokens() {
    let long = "a".repeat(TOKEN_LEN_MAX_BYTES + 1);
    let valid = sign(Algorithm::Hs256, None, &claims());
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        "e30.e30.",
        &long,
        &format!("{valid}.x"),
    ] {
        assert_eq!(
            hs_verifier().verify(token, NOW),
            Err(AuthError::Malformed),
            "{token}"
        );
    }
    // A correctly signed payload that is not a claims object.
    let header = Header::new(jsonwebtoken::Algorithm::HS256);
    let array = encode(&header, &json!([1, 2]), &EncodingKey::from_secret(SECRET)).unwrap();
    assert_eq!(hs_verifier().verify(&array, NOW), Err(AuthError::Malformed));
}

/// The claims with `changes` applied (`null` removes a claim), signed with HS256.
fn hs_token(changes: Value) -> String {
    let mut claims = claims();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    sign(Algorithm::Hs256, None, &claims)
}

#[test]
fn time_claims_and_their_leeway() {
    let exp_ms = (NOW_SECS + 600) * 1_000;
    let leeway = LEEWAY_MS_DEFAULT;
    let nbf_ms = (NOW_SECS + 100) * 1_000;
    let cases: Vec<(&str, String, Timestamp, Result<(), AuthError>)> = vec![
        ("valid", hs_token(json!({})), NOW, Ok(())),
        (
            "last ms of the leeway",
            hs_token(json!({})),
            Timestamp(exp_ms + leeway - 1),
            Ok(()),
        ),
        (
            "leeway over",
            hs_token(json!({})),
            Timestamp(exp_ms + leeway),
            Err(AuthError::Expired),
        ),
        (
            "long expired",
            hs_token(json!({})),
            Timestamp(u64::MAX),
            Err(AuthError::Expired),
        ),
        (
            "no exp",
            hs_token(json!({"exp": null})),
            NOW,
            Err(AuthError::MissingExpiry),
        ),
        (
            "exp not a number",
            hs_token(json!({"exp": "soon"})),
            NOW,
            Err(AuthError::Malformed),
        ),
        (
            "negative exp",
            hs_token(json!({"exp": -1})),
            NOW,
            Err(AuthError::Malformed),
        ),
        (
            "fractional exp",
            hs_token(json!({"exp": (NOW_SECS as f64) + 0.5})),
            Timestamp(NOW_SECS * 1_000 + 499 + leeway),
            Ok(()),
        ),
        (
            "fractional exp, over",
            hs_token(json!({"exp": (NOW_SECS as f64) + 0.5})),
            Timestamp(NOW_SECS * 1_000 + 500 + leeway),
            Err(AuthError::Expired),
        ),
        (
            "nbf in leeway",
            hs_token(json!({"nbf": NOW_SECS + 100})),
            Timestamp(nbf_ms - leeway),
            Ok(()),
        ),
        (
            "nbf before leeway",
            hs_token(json!({"nbf": NOW_SECS + 100})),
            Timestamp(nbf_ms - leeway - 1),
            Err(AuthError::NotYetValid),
        ),
        (
            "nbf past",
            hs_token(json!({"nbf": NOW_SECS - 100})),
            NOW,
            Ok(()),
        ),
    ];
    for (what, token, now, expected) in cases {
        assert_eq!(
            hs_verifier().verify(&token, now).map(|_| ()),
            expected,
            "{what}"
        );
    }
    let mut lenient = hs_verifier();
    lenient.require_exp = false;
    lenient.leeway_ms = 0;
    let forever = lenient
        .verify(&hs_token(json!({"exp": null})), NOW)
        .unwrap();
    assert_eq!(forever.expires_at, None);
    assert_eq!(
        lenient.verify(&hs_token(json!({})), Timestamp(exp_ms)),
        Err(AuthError::Expired)
    );
}

#[test]
fn issuer_audience_subject_name_and_grants() {
    let mut strict = hs_verifier();
    strict.issuer = Some("https://id.example".into());
    strict.audience = Some("edgechat".into());
    let plain = hs_verifier();
    let cases: Vec<(&str, &TokenVerifier, Value, Result<(), AuthError>)> = vec![
        (
            "iss and aud",
            &strict,
            json!({"iss": "https://id.example", "aud": "edgechat"}),
            Ok(()),
        ),
        (
            "aud in a list",
            &strict,
            json!({"iss": "https://id.example", "aud": ["other", "edgechat"]}),
            Ok(()),
        ),
        (
            "no iss",
            &strict,
            json!({"aud": "edgechat"}),
            Err(AuthError::WrongIssuer),
        ),
        (
            "wrong iss",
            &strict,
            json!({"iss": "https://evil.example", "aud": "edgechat"}),
            Err(AuthError::WrongIssuer),
        ),
        (
            "no aud",
            &strict,
            json!({"iss": "https://id.example"}),
            Err(AuthError::WrongAudience),
        ),
        (
            "wrong aud",
            &strict,
            json!({"iss": "https://id.example", "aud": ["other"]}),
            Err(AuthError::WrongAudience),
        ),
        (
            "aud not expected",
            &plain,
            json!({"aud": "x"}),
            Err(AuthError::WrongAudience),
        ),
        (
            "no sub",
            &plain,
            json!({"sub": null}),
            Err(AuthError::MissingSubject),
        ),
        (
            "empty sub",
            &plain,
            json!({"sub": ""}),
            Err(AuthError::BadSubject),
        ),
        (
            "numeric sub",
            &plain,
            json!({"sub": 42}),
            Err(AuthError::BadSubject),
        ),
        (
            "long sub",
            &plain,
            json!({"sub": "s".repeat(SUBJECT_LEN_MAX_BYTES + 1)}),
            Err(AuthError::BadSubject),
        ),
        (
            "empty name",
            &plain,
            json!({"name": ""}),
            Err(AuthError::BadName),
        ),
        (
            "long name",
            &plain,
            json!({"name": "n".repeat(33)}),
            Err(AuthError::BadName),
        ),
        (
            "name not text",
            &plain,
            json!({"name": 7}),
            Err(AuthError::BadName),
        ),
        (
            "rooms a list",
            &plain,
            json!({"rooms": ["lobby"]}),
            Err(AuthError::BadGrants),
        ),
        (
            "unknown role",
            &plain,
            json!({"rooms": {"lobby": "admin"}}),
            Err(AuthError::BadGrants),
        ),
        ("no rooms", &plain, json!({"rooms": null}), Ok(())),
    ];
    for (what, verifier, changes, expected) in cases {
        let token = hs_token(changes);
        assert_eq!(verifier.verify(&token, NOW).map(|_| ()), expected, "{what}");
    }
}

#[test]
fn a_token_without_name_is_named_by_its_subject() {
    let long_sub = format!("{}é", "u".repeat(31)); // 32 UTF-16 units: fits exactly
    let longer_sub = format!("{}😀tail", "u".repeat(31)); // the emoji would be units 32-33
    let cases = [
        ("user-42", "user-42"),
        (long_sub.as_str(), long_sub.as_str()),
        (longer_sub.as_str(), &longer_sub[..31]),
    ];
    for (sub, name) in cases {
        let token = hs_token(json!({"sub": sub, "name": null}));
        let verified = hs_verifier().verify(&token, NOW).unwrap();
        assert_eq!((verified.sub.as_str(), verified.name.as_str()), (sub, name));
    }
}

#[test]
fn grants_by_name_private_id_and_wildcard() {
    let secret = IdSecret::new(b"grant test".to_vec());
    let private = ObjectId::mint_private(Namespace::Room, [9; 16], &secret);
    let token = hs_token(json!({"rooms": {
        "lobby": "read",
        private.to_hex(): "moderator",
        "*": "write",
    }}));
    let grants = hs_verifier().verify(&token, NOW).unwrap().grants;
    let named = |name| ObjectId::from_name(Namespace::Room, name);
    assert_eq!(
        grants.role_for(&named("lobby")),
        Some(Role::Read),
        "own entry beats *"
    );
    assert_eq!(grants.role_for(&private), Some(Role::Moderator));
    assert_eq!(grants.role_for(&named("elsewhere")), Some(Role::Write));
    let token = hs_token(json!({"rooms": {"lobby": "write"}}));
    let grants = hs_verifier().verify(&token, NOW).unwrap().grants;
    assert_eq!(grants.role_for(&named("Lobby")), None, "names are exact");
    assert_eq!(grants.role_for(&private), None);
    let too_many: serde_json::Map<String, Value> = (0..=ROOM_GRANTS_MAX)
        .map(|i| (format!("r{i}"), json!("read")))
        .collect();
    let token = hs_token(json!({ "rooms": too_many }));
    assert_eq!(hs_verifier().verify(&token, NOW), Err(AuthError::BadGrants));
}

fn config(mode: AuthMode, token_only: &[&str]) -> AuthConfig {
    let verifier = (mode != AuthMode::Off).then(hs_verifier);
    let rooms = token_only
        .iter()
        .map(|name| ObjectId::from_name(Namespace::Room, name));
    AuthConfig::new(mode, verifier, rooms).unwrap()
}

#[test]
fn modes_decide_who_enters() {
    use AuthMode::{Off, Optional, Required};
    let valid = hs_token(json!({}));
    let expired = hs_token(json!({"exp": NOW_SECS - 3600}));
    let not_granted = hs_token(json!({"rooms": {"news": "write"}}));
    let anonymous = Ok(None);
    let ada = Ok(Some(("user-42".to_owned(), Role::Write)));
    type Entered = Result<Option<(String, Role)>, AuthError>;
    let cases: Vec<(AuthMode, &[&str], Option<&str>, Entered)> = vec![
        (Off, &[], None, anonymous.clone()),
        (Off, &[], Some(&valid), anonymous.clone()),
        (Off, &[], Some("garbage"), anonymous.clone()),
        (Optional, &[], None, anonymous.clone()),
        (Optional, &[], Some(""), anonymous.clone()),
        (Optional, &[], Some(&valid), ada.clone()),
        (Optional, &[], Some(&expired), Err(AuthError::Expired)),
        (Optional, &[], Some("garbage"), Err(AuthError::Malformed)),
        (
            Optional,
            &[],
            Some(&not_granted),
            Err(AuthError::RoomNotGranted),
        ),
        (Optional, &["lobby"], None, Err(AuthError::Missing)),
        (Optional, &["news"], None, anonymous.clone()),
        (Optional, &["lobby"], Some(&valid), ada.clone()),
        (Required, &[], None, Err(AuthError::Missing)),
        (Required, &[], Some(&valid), ada.clone()),
        (
            Required,
            &[],
            Some(&not_granted),
            Err(AuthError::RoomNotGranted),
        ),
    ];
    for (mode, token_only, token, expected) in cases {
        let entered =
            config(mode, token_only)
                .admit(&lobby(), token, NOW)
                .map(|access| match access {
                    Access::Anonymous => None,
                    Access::User(identity) => Some((identity.sub, identity.role)),
                });
        assert_eq!(entered, expected, "{mode:?} {token_only:?} {token:?}");
    }
}

#[test]
fn the_admin_token_reads_every_room_in_every_mode() {
    let admin = Some("op-secret");
    let reader = format!("Bearer {}", hs_token(json!({"rooms": {"lobby": "read"}})));
    for mode in [AuthMode::Off, AuthMode::Optional, AuthMode::Required] {
        let token_only: &[&str] = if mode == AuthMode::Off {
            &[]
        } else {
            &["lobby"]
        };
        let auth = config(mode, token_only);
        let read = |header: Option<&str>, admin: Option<&str>| {
            auth.admit_reader(&lobby(), header, admin, NOW)
        };
        assert_eq!(read(Some("Bearer op-secret"), admin), Ok(()), "{mode:?}");
        assert_eq!(read(Some(&reader), admin), Ok(()), "{mode:?}");
        if mode == AuthMode::Off {
            continue;
        }
        // Not the admin token: judged as a bearer token (malformed here), never waved through.
        let wrong = read(Some("Bearer op-secreT"), admin);
        assert_eq!(wrong, Err(AuthError::Malformed), "{mode:?}");
        // No admin token configured: the same header is only a (malformed) bearer token.
        let unconfigured = read(Some("Bearer op-secret"), None);
        assert_eq!(unconfigured, Err(AuthError::Malformed), "{mode:?}");
        assert_eq!(read(None, admin), Err(AuthError::Missing), "{mode:?}");
    }
}

#[test]
fn a_read_only_token_cannot_send() {
    let auth = config(AuthMode::Required, &[]);
    let reader = hs_token(json!({"rooms": {"lobby": "read"}}));
    let access = auth.admit(&lobby(), Some(&reader), NOW).unwrap();
    assert_eq!(access.check_send(), Err(AuthError::ReadOnly));
    let writer = auth
        .admit(&lobby(), Some(&hs_token(json!({}))), NOW)
        .unwrap();
    assert_eq!(writer.check_send(), Ok(()));
    assert_eq!(Access::Anonymous.check_send(), Ok(()));
    assert!(Role::Moderator.may_send() && Role::Write.may_send() && !Role::Read.may_send());
}

#[test]
fn refresh_keeps_the_user() {
    let auth = config(AuthMode::Required, &[]);
    let Access::User(current) = auth
        .admit(&lobby(), Some(&hs_token(json!({}))), NOW)
        .unwrap()
    else {
        panic!("a user")
    };
    let later = hs_token(json!({"exp": NOW_SECS + 1200, "rooms": {"lobby": "read"}}));
    let fresh = auth.refresh(&lobby(), &current, &later, NOW).unwrap();
    assert_eq!(fresh.role, Role::Read, "a refresh may change the grant");
    assert!(fresh.expires_at > current.expires_at);
    let someone_else = hs_token(json!({"sub": "user-7"}));
    assert_eq!(
        auth.refresh(&lobby(), &current, &someone_else, NOW),
        Err(AuthError::SubjectChanged)
    );
    let elsewhere = hs_token(json!({"rooms": {"news": "write"}}));
    assert_eq!(
        auth.refresh(&lobby(), &current, &elsewhere, NOW),
        Err(AuthError::RoomNotGranted)
    );
}

#[test]
fn bad_configurations_are_refused() {
    assert_eq!(
        AuthConfig::new(AuthMode::Required, None, []).unwrap_err(),
        ConfigError::NoVerifier(AuthMode::Required)
    );
    assert_eq!(
        AuthConfig::new(AuthMode::Off, None, [lobby()]).unwrap_err(),
        ConfigError::TokenOnlyRoomsWhileOff
    );
    assert_eq!(AuthConfig::default().mode(), AuthMode::Off);
}

#[test]
fn every_refusal_has_its_own_text_and_status() {
    let all = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::AlgorithmNotAllowed,
        AuthError::UnknownKey,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::MissingExpiry,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::MissingSubject,
        AuthError::BadSubject,
        AuthError::BadName,
        AuthError::BadGrants,
        AuthError::RoomNotGranted,
        AuthError::ReadOnly,
        AuthError::SubjectChanged,
    ];
    let texts: BTreeSet<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(texts.len(), all.len(), "texts are distinct");
    for error in all {
        let forbidden = matches!(
            error,
            AuthError::RoomNotGranted | AuthError::ReadOnly | AuthError::SubjectChanged
        );
        assert_eq!(
            error.status(),
            if forbidden { 403 } else { 401 },
            "{error:?}"
        );
    }
}

#[test]
fn tokens_arrive_in_the_query_or_the_authorization_header() {
    let cases: Vec<(Option<&str>, Option<&str>)> = vec![
        (None, None),
        (Some(""), None),
        (Some("token="), None),
        (Some("token=a.b.c"), Some("a.b.c")),
        (Some("since=4&token=a.b.c&x=1"), Some("a.b.c")),
        (Some("mytoken=x&token=y"), Some("y")),
        (Some("token=a%2Eb.c"), Some("a.b.c")),
        (Some("token=a+b"), Some("a+b")),
        (Some("token=a%2"), Some("a%2")),
        (Some("token=%FF"), Some("%FF")),
        (Some("token=first&token=second"), Some("first")),
    ];
    for (query, expected) in cases {
        assert_eq!(token_from_query(query).as_deref(), expected, "{query:?}");
    }
    let cases: Vec<(Option<&str>, Option<&str>)> = vec![
        (None, None),
        (Some("Bearer a.b.c"), Some("a.b.c")),
        (Some("bearer  a.b.c "), Some("a.b.c")),
        (Some("Basic dXNlcjpwYXNz"), None),
        (Some("Bearer "), None),
        (Some("Bearer"), None),
        (Some("a.b.c"), None),
    ];
    for (header, expected) in cases {
        assert_eq!(bearer_token(header), expected, "{header:?}");
    }
}

#[test]
fn origins_match_exactly() {
    let allowed = vec![
        "https://app.example".to_owned(),
        "http://localhost:8787".to_owned(),
        "https://[::1]:8443/".to_owned(),
    ];
    let own = Some("https://chat.example");
    let cases = [
        (None, true),
        (Some("https://chat.example"), true),
        (Some("https://CHAT.example:443"), true),
        (Some("https://app.example"), true),
        (Some("HTTPS://App.Example"), true),
        (Some("http://localhost:8787"), true),
        (Some("https://[::1]:8443"), true),
        (Some("http://app.example"), false),
        (Some("https://app.example:8443"), false),
        (Some("https://app.example.evil"), false),
        (Some("https://evil-app.example"), false),
        (Some("https://app.example@evil.example"), false),
        (Some("https://app.example/path"), false),
        (Some("http://localhost:8788"), false),
        (Some("null"), false),
        (Some(""), false),
        (Some("https://"), false),
    ];
    for (origin, expected) in cases {
        assert_eq!(
            origin_allowed(origin, &allowed, own),
            expected,
            "{origin:?}"
        );
    }
    assert!(!origin_allowed(Some("https://a.example"), &[], None));
    assert!(origin_allowed(None, &[], None));
}

#[test]
fn user_and_ip_limiters_never_share_an_id() {
    use crate::limiter::{limiter_id, limiter_id_for, limiter_id_for_user};
    let ip = "10.0.0.1".parse().unwrap();
    assert_ne!(limiter_id_for_user("10.0.0.1"), limiter_id(ip));
    assert_eq!(limiter_id_for(Some("u"), ip), limiter_id_for_user("u"));
    assert_eq!(limiter_id_for(None, ip), limiter_id(ip));
    assert_ne!(limiter_id_for_user("a"), limiter_id_for_user("b"));
}

/// Strategy: a valid token of each algorithm (signing is deterministic except RS256's
/// blinding, which does not change the signature).
fn any_valid_token() -> impl Strategy<Value = (Algorithm, String)> {
    prop::sample::select(ALGORITHMS.to_vec()).prop_map(|alg| (alg, sign(alg, None, &claims())))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any single byte of a valid token changed (to any other value) is refused.
    #[test]
    fn any_changed_byte_is_refused(
        (alg, token) in any_valid_token(),
        position in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let mut bytes = token.clone().into_bytes();
        let index = position.index(bytes.len());
        prop_assume!(bytes[index] != replacement);
        bytes[index] = replacement;
        let changed = String::from_utf8_lossy(&bytes);
        prop_assert!(pem_verifier(alg).verify(&changed, NOW).is_err());
    }

    /// A token valid now is accepted whatever the order of its claims.
    #[test]
    fn claim_order_does_not_matter(
        order in Just(claim_pairs()).prop_shuffle(),
        alg in prop::sample::select(ALGORITHMS.to_vec()),
    ) {
        let body = format!(
            "{{{}}}",
            order.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
        );
        let header = json!({"alg": alg.name(), "typ": "JWT"});
        let token = sign_raw(alg, &header, body.as_bytes());
        let verified = pem_verifier(alg).verify(&token, NOW).unwrap();
        prop_assert_eq!(verified.sub.as_str(), "user-42");
        prop_assert_eq!(verified.grants.role_for(&lobby()), Some(Role::Write));
    }
}

/// The claims as (key, JSON text) pairs, to be written in any order.
fn claim_pairs() -> Vec<(&'static str, String)> {
    vec![
        ("sub", "\"user-42\"".into()),
        ("name", "\"Ada\"".into()),
        ("exp", (NOW_SECS + 600).to_string()),
        ("nbf", (NOW_SECS - 60).to_string()),
        ("iat", (NOW_SECS - 60).to_string()),
        (
            "rooms",
            r#"{"news":"read","lobby":"write","*":"read"}"#.into(),
        ),
    ]
}

/// Signs a payload given as exact bytes (so its key order is the caller's).
fn sign_raw(alg: Algorithm, header: &Value, payload: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = match alg {
        Algorithm::Hs256 => EncodingKey::from_secret(SECRET),
        Algorithm::Rs256 => EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        Algorithm::Es256 => EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        Algorithm::EdDsa => EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
    };
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg.to_jwt()).unwrap();
    format!("{message}.{signature}")
}

#[test]
fn key_bounds_are_exact() {
    assert_eq!(
        VerifyingKeys::hs256(&[7; HS256_SECRET_LEN_MIN_BYTES])
            .unwrap()
            .len(),
        1
    );
    // A document of exactly the limit is read (and found wanting); one byte more is not.
    let document = |len: usize| " ".repeat(len);
    assert_eq!(
        VerifyingKeys::from_pem(
            Algorithm::Rs256,
            document(KEY_DOCUMENT_LEN_MAX_BYTES).as_bytes()
        )
        .unwrap_err(),
        KeyError::BadPem("RS256")
    );
    assert_eq!(
        VerifyingKeys::from_pem(
            Algorithm::Rs256,
            document(KEY_DOCUMENT_LEN_MAX_BYTES + 1).as_bytes()
        )
        .unwrap_err(),
        KeyError::TooLarge
    );
    assert_eq!(
        VerifyingKeys::from_jwks(&document(KEY_DOCUMENT_LEN_MAX_BYTES)).unwrap_err(),
        KeyError::BadJwks
    );
    assert_eq!(
        VerifyingKeys::from_jwks(&document(KEY_DOCUMENT_LEN_MAX_BYTES + 1)).unwrap_err(),
        KeyError::TooLarge
    );
    // Exactly KEYS_MAX entries (one usable, the rest skipped) are read.
    let usable: Value = serde_json::from_str::<Value>(JWKS).unwrap()["keys"][0].clone();
    let mut entries = vec![json!({}); KEYS_MAX - 1];
    entries.push(usable);
    let at_max = json!({ "keys": entries }).to_string();
    assert_eq!(VerifyingKeys::from_jwks(&at_max).unwrap().len(), 1);
    // Merging up to KEYS_MAX keys is allowed, one more is not.
    let one = || VerifyingKeys::hs256(SECRET).unwrap();
    let full = (1..KEYS_MAX).fold(one(), |keys, _| keys.merge(one()).unwrap());
    assert_eq!(full.len(), KEYS_MAX);
    assert!(!full.is_empty());
    assert_eq!(full.merge(one()).unwrap_err(), KeyError::TooLarge);
    assert!(VerifyingKeys { keys: Vec::new() }.is_empty());
}

#[test]
fn debug_names_each_key_by_kid_and_algorithm() {
    let keys = VerifyingKeys::from_jwks(JWKS).unwrap();
    let debug = format!("{keys:?}");
    for shown in ["rsa-1", "RS256", "ec-1", "ES256", "ed-1", "EdDSA"] {
        assert!(debug.contains(shown), "{shown} in {debug}");
    }
}

/// The `x` of the committed JWKS's Ed25519 key.
fn ed25519_x() -> Value {
    let jwks: Value = serde_json::from_str(JWKS).unwrap();
    jwks["keys"][2]["x"].clone()
}

#[test]
fn jwks_keys_on_other_curves_are_skipped() {
    for key in [
        json!({"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA"}),
        // A well-formed 32-byte key labelled with a curve no OKP key has (the JWK library
        // knows no other OKP curve: X25519 and Ed448 entries do not even parse).
        json!({"kty": "OKP", "crv": "P-384", "x": ed25519_x()}),
    ] {
        let jwks = json!({ "keys": [key] }).to_string();
        assert_eq!(
            VerifyingKeys::from_jwks(&jwks).unwrap_err(),
            KeyError::NoUsableKey,
            "{jwks}"
        );
    }
}

#[test]
fn exactly_room_grants_max_grants_are_read() {
    let at_max: serde_json::Map<String, Value> = (0..ROOM_GRANTS_MAX)
        .map(|i| (format!("r{i}"), json!("read")))
        .collect();
    let token = hs_token(json!({ "rooms": at_max }));
    let grants = hs_verifier().verify(&token, NOW).unwrap().grants;
    let last = ObjectId::from_name(Namespace::Room, &format!("r{}", ROOM_GRANTS_MAX - 1));
    assert_eq!(grants.role_for(&last), Some(Role::Read));
}

#[test]
fn a_token_of_exactly_the_length_limit_verifies_and_a_longer_one_is_malformed() {
    // A valid token of `len` bytes, found by padding a claim and the kid.
    let token_of = |len: usize| {
        (0..len)
            .flat_map(|pad| (0..4).map(move |kid| (pad, kid)))
            .map(|(pad, kid)| {
                let mut claims = claims();
                claims["pad"] = json!("p".repeat(pad));
                sign(Algorithm::Hs256, Some(&"k".repeat(kid + 1)), &claims)
            })
            .find(|token| token.len() == len)
            .expect("a padding that fits")
    };
    let at_limit = token_of(TOKEN_LEN_MAX_BYTES);
    assert!(hs_verifier().verify(&at_limit, NOW).is_ok());
    let beyond = token_of(TOKEN_LEN_MAX_BYTES + 1);
    assert_eq!(
        hs_verifier().verify(&beyond, NOW),
        Err(AuthError::Malformed)
    );
}

#[test]
fn a_config_reports_its_mode() {
    for mode in [AuthMode::Off, AuthMode::Optional, AuthMode::Required] {
        assert_eq!(config(mode, &[]).mode(), mode);
    }
}

#[test]
fn origins_with_a_path_never_match_and_a_bracketed_host_needs_no_port() {
    let listed =
        |entry: &str, origin: &str| origin_allowed(Some(origin), &[entry.to_owned()], None);
    assert!(!listed(
        "https://app.example/path",
        "https://app.example/path"
    ));
    assert!(!listed(
        "https://ada@app.example",
        "https://ada@app.example"
    ));
    assert!(listed("https://[::1]", "https://[::1]"));
    assert!(listed("https://[::1]", "https://[::1]:443"));
}

#[test]
fn host_headers_up_to_the_length_limit_are_read() {
    // The longest plausible Host: a 253-byte name, a colon and a five-digit port.
    let longest = format!("{}:12345", "a".repeat(253));
    assert_eq!(
        own_origins(Some(&longest), PageScheme::Https),
        [format!("https://{longest}")]
    );
    // A bracketed IPv6 host is checked by length too: one byte beyond the limit is odd.
    let bracketed = |len: usize| format!("[:{}]", "0".repeat(len - 3));
    assert_eq!(
        own_origins(Some(&bracketed(HOST_LEN_MAX_BYTES)), PageScheme::Https).len(),
        1
    );
    assert!(own_origins(Some(&bracketed(HOST_LEN_MAX_BYTES + 1)), PageScheme::Https).is_empty());
}

#[test]
fn a_query_token_with_a_bad_escape_is_taken_as_it_came() {
    assert_eq!(
        token_from_query(Some("token=a%2Eb%zz")).as_deref(),
        Some("a%2Eb%zz")
    );
}
