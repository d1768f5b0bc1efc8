//! `sha256=<hex>` signatures: HMAC-SHA256 of a raw body under a shared secret, as GitHub
//! signs its webhooks (`X-Hub-Signature-256`, checked by github-ingest in constant time) and
//! as Kiln signs its build notifications (`X-Kiln-Signature-256`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// True when `header` is `sha256=<hex>` of the body's HMAC under `secret`. The comparison
/// (`verify_slice`) takes the same time wherever the first differing byte is.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The header value for `body` signed with `secret`, as GitHub sends it and as Kiln's
/// notifications carry it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_signature_verifies() {
        let body = br#"{"zen":"hi"}"#;
        let good = sign(b"s3cret", body);
        assert!(verify(b"s3cret", body, Some(&good)));
        assert!(!verify(b"other", body, Some(&good)));
        assert!(!verify(b"s3cret", b"{}", Some(&good)));
        assert!(!verify(b"s3cret", body, None));
        assert!(!verify(b"s3cret", body, Some("sha1=abc")));
        assert!(!verify(b"s3cret", body, Some("sha256=zz")));
    }
}
