//! Verifier unit tests with keys generated per run (Ed25519 via aws-lc-rs) and HS256 secrets in
//! temporary files. RS256/ES256 tokens minted by PyJWT are covered end to end
//! (tests/e2e/test_authz_jwt.py).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::{encode, EncodingKey};
use serde_json::json;
use tandem_config::Jwks;

use super::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct EdKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

fn ed_key() -> EdKey {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    EdKey {
        pkcs8: doc.as_ref().to_vec(),
        public: pair.public_key().as_ref().to_vec(),
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn jwks_file(keys: &[(&str, &EdKey)]) -> tempfile::NamedTempFile {
    let keys: Vec<_> = keys
        .iter()
        .map(|(kid, k)| json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&k.public)}))
        .collect();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(json!({ "keys": keys }).to_string().as_bytes())
        .unwrap();
    f
}

fn config(jwks: Option<&Path>, algorithms: &[JwtAlgorithm], secret: Option<&Path>) -> Jwt {
    Jwt {
        issuer: "https://issuer.test".into(),
        audiences: vec!["orders".into(), "billing".into()],
        jwks: jwks.map(|p| Jwks {
            source: JwksSource::File(p.to_owned()),
            ca: None,
            refresh: Duration::from_secs(300),
            min_refresh_interval: Duration::from_millis(1),
        }),
        algorithms: algorithms.to_vec(),
        leeway: Duration::from_secs(5),
        forward_claims: vec![("sub".into(), "x-user".into())],
        hs256_secret_file: secret.map(Path::to_owned),
    }
}

fn claims(exp_in: i64) -> Value {
    json!({
        "iss": "https://issuer.test",
        "aud": "orders",
        "sub": "alice",
        "exp": (now() as i64 + exp_in),
    })
}

fn ed_token(k: &EdKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, &EncodingKey::from_ed_der(&k.pkcs8)).unwrap()
}

/// A valid EdDSA token passes and yields its claims; each broken claim fails with its reason.
#[tokio::test]
async fn claims_are_checked() {
    let k = ed_key();
    let f = jwks_file(&[("k1", &k)]);
    let v = Verifier::new("r", &config(Some(f.path()), &[JwtAlgorithm::EdDSA], None));
    let ok = v
        .verify(&ed_token(&k, Some("k1"), &claims(60)))
        .await
        .unwrap();
    assert_eq!(ok["sub"], "alice");
    // Audience as a list with one accepted value passes too.
    let mut c = claims(60);
    c["aud"] = json!(["other", "billing"]);
    assert!(v.verify(&ed_token(&k, Some("k1"), &c)).await.is_ok());

    let cases: Vec<(Value, JwtError)> = vec![
        (claims(-60), JwtError::Expired),
        (
            {
                let mut c = claims(60);
                c["nbf"] = json!(now() + 120);
                c
            },
            JwtError::NotYetValid,
        ),
        (
            {
                let mut c = claims(60);
                c["aud"] = json!("someone-else");
                c
            },
            JwtError::WrongAudience,
        ),
        (
            {
                let mut c = claims(60);
                c["iss"] = json!("https://evil.test");
                c
            },
            JwtError::WrongIssuer,
        ),
        (
            {
                let mut c = claims(60);
                c.as_object_mut().unwrap().remove("exp");
                c
            },
            JwtError::MissingClaim("exp".into()),
        ),
        (
            {
                let mut c = claims(60);
                c.as_object_mut().unwrap().remove("aud");
                c
            },
            JwtError::MissingClaim("aud".into()),
        ),
    ];
    for (c, want) in cases {
        assert_eq!(
            v.verify(&ed_token(&k, Some("k1"), &c)).await.unwrap_err(),
            want,
            "{c}"
        );
    }
    // Within the leeway (5 s): a token expired 2 s ago still passes.
    assert!(v
        .verify(&ed_token(&k, Some("k1"), &claims(-2)))
        .await
        .is_ok());
}

/// A token signed by another key, or with a tampered payload, fails its signature; an unknown
/// kid is reported as such; `alg: none` is malformed; without a kid the set's keys are tried.
#[tokio::test]
async fn signatures_and_key_selection() {
    let k = ed_key();
    let other = ed_key();
    let f = jwks_file(&[("k1", &k)]);
    let v = Verifier::new("r", &config(Some(f.path()), &[JwtAlgorithm::EdDSA], None));
    assert_eq!(
        v.verify(&ed_token(&other, Some("k1"), &claims(60)))
            .await
            .unwrap_err(),
        JwtError::BadSignature
    );
    assert_eq!(
        v.verify(&ed_token(&k, Some("nope"), &claims(60)))
            .await
            .unwrap_err(),
        JwtError::UnknownKid
    );
    assert!(v.verify(&ed_token(&k, None, &claims(60))).await.is_ok());
    assert_eq!(
        v.verify(&ed_token(&other, None, &claims(60)))
            .await
            .unwrap_err(),
        JwtError::BadSignature
    );
    let good = ed_token(&k, Some("k1"), &claims(60));
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged = claims(60);
    forged["sub"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        v.verify(&tampered).await.unwrap_err(),
        JwtError::BadSignature
    );
    // alg none: no signature at all.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(60).to_string().as_bytes())
    );
    assert_eq!(v.verify(&none).await.unwrap_err(), JwtError::Malformed);
    for junk in [
        "",
        "a",
        "a.b",
        "a.b.c",
        "....",
        "eyJhbGciOiJFZERTQSJ9.e30.AAAA",
    ] {
        assert!(v.verify(junk).await.is_err(), "{junk}");
    }
}

/// Algorithm confusion: an HS256 token whose secret is the RSA public key is refused when
/// HS256 is not accepted, and fails the signature when it is (the HMAC key is only ever the
/// configured secret, never a JWKS key).
#[tokio::test]
async fn hs256_is_explicit_and_never_uses_jwks_keys() {
    let mut jwks = tempfile::NamedTempFile::new().unwrap();
    jwks.write_all(tests_support::JWKS.as_bytes()).unwrap();
    let rsa_n: Value =
        serde_json::from_str::<Value>(tests_support::JWKS).unwrap()["keys"][0]["n"].clone();
    let confused_secret = rsa_n.as_str().unwrap().as_bytes().to_vec();
    let confused = |kid: &str| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        encode(&h, &claims(60), &EncodingKey::from_secret(&confused_secret)).unwrap()
    };
    let rs_only = Verifier::new(
        "r",
        &config(Some(jwks.path()), &[JwtAlgorithm::RS256], None),
    );
    assert_eq!(
        rs_only.keys().len(),
        2,
        "the oct key is skipped, RSA and EC kept"
    );
    assert_eq!(
        rs_only.verify(&confused("rsa1")).await.unwrap_err(),
        JwtError::AlgorithmNotAccepted("HS256")
    );

    let mut secret = tempfile::NamedTempFile::new().unwrap();
    secret
        .write_all(b"0123456789abcdef0123456789abcdef\n")
        .unwrap();
    let both = Verifier::new(
        "r",
        &config(
            Some(jwks.path()),
            &[JwtAlgorithm::RS256, JwtAlgorithm::HS256],
            Some(secret.path()),
        ),
    );
    assert_eq!(
        both.verify(&confused("rsa1")).await.unwrap_err(),
        JwtError::BadSignature
    );
    // The oct key of the JWKS is not an HS256 key either.
    let oct = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("sym".into());
        encode(
            &h,
            &claims(60),
            &EncodingKey::from_secret(b"secret-secret-secret-secret-secret"),
        )
        .unwrap()
    };
    assert_eq!(both.verify(&oct).await.unwrap_err(), JwtError::BadSignature);
    // The configured secret (trailing newline dropped) verifies.
    let real = encode(
        &Header::new(Algorithm::HS256),
        &claims(60),
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    assert!(both.verify(&real).await.is_ok());
    // An EdDSA token is refused on a route that accepts RS256 and HS256 only.
    let k = ed_key();
    assert_eq!(
        both.verify(&ed_token(&k, None, &claims(60)))
            .await
            .unwrap_err(),
        JwtError::AlgorithmNotAccepted("EdDSA")
    );
}

/// An unknown kid reloads the file once: a key added after start is picked up; a short secret
/// is refused.
#[tokio::test]
async fn unknown_kid_reloads() {
    let k1 = ed_key();
    let k2 = ed_key();
    let f = jwks_file(&[("k1", &k1)]);
    let v = Verifier::new("r", &config(Some(f.path()), &[JwtAlgorithm::EdDSA], None));
    let t2 = ed_token(&k2, Some("k2"), &claims(60));
    assert_eq!(v.verify(&t2).await.unwrap_err(), JwtError::UnknownKid);
    std::fs::write(f.path(), {
        let g = jwks_file(&[("k1", &k1), ("k2", &k2)]);
        std::fs::read(g.path()).unwrap()
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(v.verify(&t2).await.is_ok());

    let mut short = tempfile::NamedTempFile::new().unwrap();
    short.write_all(b"too-short").unwrap();
    let hs = Verifier::new(
        "r",
        &config(None, &[JwtAlgorithm::HS256], Some(short.path())),
    );
    let t = encode(
        &Header::new(Algorithm::HS256),
        &claims(60),
        &EncodingKey::from_secret(b"too-short"),
    )
    .unwrap();
    assert_eq!(hs.verify(&t).await.unwrap_err(), JwtError::NoKey);
}

/// Bearer extraction, challenges and claim values.
#[test]
fn helpers() {
    let mut h = HeaderMap::new();
    assert_eq!(bearer_token(&h), None);
    h.insert(
        "authorization",
        HeaderValue::from_static("bearer abc.def.ghi"),
    );
    assert_eq!(bearer_token(&h), Some("abc.def.ghi"));
    h.insert("authorization", HeaderValue::from_static("Basic dXNlcjpw"));
    assert_eq!(bearer_token(&h), None);
    h.insert("authorization", HeaderValue::from_static("Bearer "));
    assert_eq!(bearer_token(&h), None);
    assert_eq!(JwtError::Missing.challenge(), "Bearer");
    assert_eq!(
        JwtError::Expired.challenge(),
        "Bearer error=\"invalid_token\", error_description=\"the token expired\""
    );
    assert_eq!(claim_value(&json!("alice")).unwrap(), "alice");
    assert_eq!(claim_value(&json!(42)).unwrap(), "42");
    assert_eq!(claim_value(&json!(["a", "b"])).unwrap(), "[\"a\",\"b\"]");
    assert!(claim_value(&json!("bad\nvalue")).is_none());
    assert!(claim_value(&Value::Null).is_none());
    assert!(KeySet::parse(b"{}").is_err());
    assert!(KeySet::parse(b"not json").is_err());
    assert_eq!(
        KeySet::parse(br#"{"keys":[{"kty":"weird"}]}"#)
            .unwrap()
            .len(),
        0
    );
}
