//! The binary's key flags against real tokens: `--auth-public-key-file ALG:PATH` (ES256,
//! RS256, EdDSA), `--auth-jwks-file`, `--auth-issuer`/`--auth-audience`, each on a server
//! process started as an operator would start it. The keys are core's committed test keys
//! (core/src/auth/testdata, README there says how they were made). Every refusal's status
//! and text are the core's ([`AuthError`]).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{ws_url, Client, DataDir, RATE_LIMITED, WAIT};
use edgechat_core::auth::AuthError;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio_tungstenite::tungstenite::Error as WsError;

/// A file of core's test keys.
fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../core/src/auth/testdata")
        .join(name)
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(key_file(name)).unwrap()
}

/// A server process started with `flags` (after `serve --listen 127.0.0.1:0 --data ...`);
/// it is killed when the returned child drops.
async fn spawn(tag: &str, flags: &[String]) -> (tokio::process::Child, SocketAddr, DataDir) {
    let dir = DataDir::new(tag);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgechat"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.db())
        // Many users from 127.0.0.1 in quick succession: no rate limit in the way.
        .args([
            "--rate-limit-cost-ms",
            "1",
            "--rate-limit-grace-ms",
            "600000",
        ])
        .args(flags)
        .env("EDGECHAT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server binary");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(WAIT, BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("the server prints its address")
        .unwrap();
    let addr = line
        .trim()
        .rsplit("://")
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("an address in {line:?}"));
    (child, addr, dir)
}

/// Claims for user `sub` named `name`, valid for ten minutes in the lobby, plus `extra`.
fn claims(sub: &str, name: &str, extra: Value) -> Value {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut claims = json!({ "sub": sub, "name": name, "exp": exp, "rooms": { "lobby": "write" } });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    claims
}

/// A token over `claims` signed with `alg` by `key` (PEM, or the HS256 secret), with `kid`.
fn sign(alg: Algorithm, key: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(key),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(key).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(key).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

fn url(addr: SocketAddr, token: &str) -> String {
    format!("{}?token={token}", ws_url(addr, "lobby"))
}

/// Joins the lobby with `token` (asking for another name) and returns the name the room
/// gave its message: the token's.
async fn admitted_as(addr: SocketAddr, token: &str) -> String {
    let mut client = Client::connect_url(&url(addr, token)).await;
    client.join("someone-else").await;
    let frame = json!({ "message": "signed in" });
    client.send(frame.clone()).await;
    for _ in 0..1_000 {
        let answer = client.frame().await;
        // The limiter's answer to the join may still be on its way (as common's `chat`).
        if answer["error"] == RATE_LIMITED {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            client.send(frame.clone()).await;
            continue;
        }
        assert!(answer.get("error").is_none(), "{answer}");
        if answer["message"] == "signed in" {
            return answer["name"].as_str().unwrap().to_owned();
        }
    }
    panic!("no echo of the message");
}

/// The refusal of an upgrade with `token`: status and body.
async fn refusal(addr: SocketAddr, token: &str) -> (u16, String) {
    let result = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url(addr, token)))
        .await
        .expect("an answer in time");
    match result {
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (response.status().as_u16(), String::from_utf8(body).unwrap())
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the upgrade succeeded"),
    }
}

fn refused_with(error: AuthError) -> (u16, String) {
    (error.status(), error.to_string())
}

#[tokio::test]
async fn public_key_files_admit_their_tokens_and_refuse_algorithm_confusion() {
    let flags: Vec<String> = [
        "--auth-mode",
        "required",
        "--auth-public-key-file",
        &format!("ES256:{}", key_file("ec_public.pem").display()),
        "--auth-public-key-file",
        &format!("RS256:{}", key_file("rsa_public.pem").display()),
        "--auth-public-key-file",
        &format!("EdDSA:{}", key_file("ed_public.pem").display()),
    ]
    .map(str::to_owned)
    .into();
    let (_child, addr, _dir) = spawn("auth-pem", &flags).await;

    let es = sign(
        Algorithm::ES256,
        &key("ec_private.pem"),
        None,
        &claims("u-es", "Esme", json!({})),
    );
    assert_eq!(admitted_as(addr, &es).await, "Esme");
    let rs = sign(
        Algorithm::RS256,
        &key("rsa_private.pem"),
        None,
        &claims("u-rs", "Rosa", json!({})),
    );
    assert_eq!(admitted_as(addr, &rs).await, "Rosa");
    let ed = sign(
        Algorithm::EdDSA,
        &key("ed_private.pem"),
        None,
        &claims("u-ed", "Edda", json!({})),
    );
    assert_eq!(admitted_as(addr, &ed).await, "Edda");

    // Another RSA key's signature does not verify.
    let stranger = sign(
        Algorithm::RS256,
        &key("rsa2_private.pem"),
        None,
        &claims("u-x", "X", json!({})),
    );
    assert_eq!(
        refusal(addr, &stranger).await,
        refused_with(AuthError::BadSignature)
    );
    // Algorithm confusion: an HMAC token keyed with a public key (which anyone has) is
    // refused, whichever public key and however it is spelled.
    for public in ["ec_public.pem", "rsa_public.pem", "ed_public.pem"] {
        let forged = sign(
            Algorithm::HS256,
            &key(public),
            None,
            &claims("admin", "Admin", json!({})),
        );
        assert_eq!(
            refusal(addr, &forged).await,
            refused_with(AuthError::AlgorithmNotAllowed),
            "HS256 keyed with {public}"
        );
    }
}

#[tokio::test]
async fn a_jwks_file_admits_tokens_by_kid() {
    let jwks = key_file("jwks.json");
    let flags: Vec<String> = [
        "--auth-mode",
        "required",
        "--auth-jwks-file",
        &jwks.display().to_string(),
    ]
    .map(str::to_owned)
    .into();
    let (_child, addr, _dir) = spawn("auth-jwks", &flags).await;

    let cases = [
        (Algorithm::RS256, "rsa_private.pem", "rsa-1", "Rosa"),
        (Algorithm::ES256, "ec_private.pem", "ec-1", "Esme"),
        (Algorithm::EdDSA, "ed_private.pem", "ed-1", "Edda"),
    ];
    for (alg, private, kid, name) in cases {
        let token = sign(alg, &key(private), Some(kid), &claims(kid, name, json!({})));
        assert_eq!(admitted_as(addr, &token).await, name, "{kid}");
    }
    let unknown = sign(
        Algorithm::ES256,
        &key("ec_private.pem"),
        Some("ec-9"),
        &claims("u", "U", json!({})),
    );
    assert_eq!(
        refusal(addr, &unknown).await,
        refused_with(AuthError::UnknownKey)
    );
    // A known kid with another key's signature.
    let wrong = sign(
        Algorithm::RS256,
        &key("rsa2_private.pem"),
        Some("rsa-1"),
        &claims("u", "U", json!({})),
    );
    assert_eq!(
        refusal(addr, &wrong).await,
        refused_with(AuthError::BadSignature)
    );
    // Algorithm confusion with the published key document as the HMAC secret.
    for kid in [None, Some("rsa-1")] {
        let forged = sign(
            Algorithm::HS256,
            &key("jwks.json"),
            kid,
            &claims("admin", "Admin", json!({})),
        );
        assert_eq!(
            refusal(addr, &forged).await,
            refused_with(AuthError::AlgorithmNotAllowed),
            "kid {kid:?}"
        );
    }
}

#[tokio::test]
async fn issuer_and_audience_must_match_the_flags() {
    let flags: Vec<String> = [
        "--auth-mode",
        "required",
        "--auth-public-key-file",
        &format!("ES256:{}", key_file("ec_public.pem").display()),
        "--auth-issuer",
        "https://login.example",
        "--auth-audience",
        "edgechat",
    ]
    .map(str::to_owned)
    .into();
    let (_child, addr, _dir) = spawn("auth-iss-aud", &flags).await;
    let private = key("ec_private.pem");
    let token = |extra: Value| {
        sign(
            Algorithm::ES256,
            &private,
            None,
            &claims("u", "Ulla", extra),
        )
    };

    let right = json!({ "iss": "https://login.example", "aud": "edgechat" });
    assert_eq!(admitted_as(addr, &token(right)).await, "Ulla");
    let among = json!({ "iss": "https://login.example", "aud": ["other", "edgechat"] });
    assert_eq!(
        admitted_as(addr, &token(among)).await,
        "Ulla",
        "aud as a list"
    );

    let cases = [
        (
            json!({ "iss": "https://evil.example", "aud": "edgechat" }),
            AuthError::WrongIssuer,
        ),
        (json!({ "aud": "edgechat" }), AuthError::WrongIssuer),
        (
            json!({ "iss": "https://login.example", "aud": "other" }),
            AuthError::WrongAudience,
        ),
        (
            json!({ "iss": "https://login.example" }),
            AuthError::WrongAudience,
        ),
    ];
    for (extra, error) in cases {
        let text = extra.to_string();
        assert_eq!(
            refusal(addr, &token(extra)).await,
            refused_with(error),
            "{text}"
        );
    }
}
