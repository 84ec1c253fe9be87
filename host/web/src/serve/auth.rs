//! Who may ask what: a webhook is accepted only with the HMAC-SHA256 of its raw body
//! under the shared secret (`X-Hub-Signature-256`, GitHub's scheme). Who may read
//! `GET /deploys` is the operator views' rule, [`crate::access::Access::may_read`]. It never
//! logs, returns or stores a secret.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

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

#[cfg(test)]
mod tests {
    use super::*;

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
