//! Who may ask what: a webhook is accepted only with the HMAC-SHA256 of its raw body
//! under the shared secret (`X-Hub-Signature-256`, GitHub's scheme); `GET /deploys`
//! is read by loopback clients, or, once a bearer token is configured, by whoever
//! sends it. It never logs, returns or stores a secret.

use std::net::IpAddr;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The `sha256=<hex>` header, decoded; none when missing or malformed.
pub(super) fn signature_header(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get("x-hub-signature-256")?.to_str().ok()?;
    let bytes = hex::decode(value.strip_prefix("sha256=")?).ok()?;
    (bytes.len() == 32).then_some(bytes)
}

/// Whether `signature` is the HMAC-SHA256 of `body` under `secret` (constant time).
pub(super) fn signature_ok(secret: &Secret, signature: &[u8], body: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(signature).is_ok()
}

/// Why a client may not read `GET /deploys`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No token is configured and the client is not on loopback.
    NotLoopback,
    /// A token is configured and the request does not carry it.
    BadToken,
}

/// Whether a client at `peer` sending `headers` may read `GET /deploys`.
pub(super) fn may_read_deploys(
    token: Option<&Secret>,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let Some(token) = token else {
        return if peer.to_canonical().is_loopback() {
            Ok(())
        } else {
            Err(Refusal::NotLoopback)
        };
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Comparing digests rather than the strings: how long the comparison takes can
    // tell a client how much of a digest it guessed, which says nothing of the token.
    match given {
        Some(given) if Sha256::digest(given) == Sha256::digest(token.expose()) => Ok(()),
        _ => Err(Refusal::BadToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploys_are_loopback_only_unless_a_token_is_configured() {
        let none = HeaderMap::new();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(may_read_deploys(None, loopback, &none), Ok(()));
        assert_eq!(may_read_deploys(None, mapped, &none), Ok(()));
        assert_eq!(
            may_read_deploys(None, remote, &none),
            Err(Refusal::NotLoopback)
        );

        let token = Secret::new("t0ken");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", value.parse().unwrap());
            headers
        };
        for peer in [remote, loopback] {
            assert_eq!(
                may_read_deploys(Some(&token), peer, &with("Bearer t0ken")),
                Ok(())
            );
            for bad in ["Bearer t0ke", "Bearer t0ken2", "Basic t0ken", "t0ken"] {
                assert_eq!(
                    may_read_deploys(Some(&token), peer, &with(bad)),
                    Err(Refusal::BadToken),
                    "{bad}"
                );
            }
            assert_eq!(
                may_read_deploys(Some(&token), peer, &none),
                Err(Refusal::BadToken),
                "no header, even from loopback: a reverse proxy makes every client loopback"
            );
        }
    }

    fn sign(secret: &[u8], body: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    #[test]
    fn signature_is_checked_against_the_raw_body() {
        let secret = Secret::new("s3cret".to_owned());
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut headers = HeaderMap::new();
        let good = format!("sha256={}", hex::encode(sign(b"s3cret", body)));
        headers.insert("x-hub-signature-256", good.parse().unwrap());
        let signature = signature_header(&headers).unwrap();
        assert!(signature_ok(&secret, &signature, body));
        assert!(!signature_ok(&secret, &signature, b"{}"), "other body");
        let other = sign(b"other secret", body);
        assert!(!signature_ok(&secret, &other, body), "other secret");
        for bad in ["sha256=00", "sha1=abcd", "sha256=zz", &good[7..]] {
            headers.insert("x-hub-signature-256", bad.parse().unwrap());
            assert_eq!(signature_header(&headers), None, "{bad}");
        }
        headers.remove("x-hub-signature-256");
        assert_eq!(signature_header(&headers), None, "missing");
    }
}
