//! Secret values at rest: sealed with AES-256-GCM under a key only the api and the workers
//! hold (`secrets.key`), so a copy of Redis (a dump, a replica, `MONITOR`) does not give
//! them away. Each value is bound to its secret's name (the AEAD's associated data): a
//! sealed value copied to another name does not open.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The key secrets are sealed with: 32 bytes, given as 64 hexadecimal digits
/// (`openssl rand -hex 32`).
pub struct SealKey(LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(***)")
    }
}

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("must be 64 hexadecimal digits (32 bytes; `openssl rand -hex 32` makes one)")]
    BadKey,
    #[error("cannot be opened with this key (sealed under another key, or damaged)")]
    Unopenable,
    #[error("no random numbers from the system")]
    Random,
}

impl SealKey {
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SealError::BadKey)?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::BadKey)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// `value` sealed for the secret `name`: hex of a fresh random nonce, the ciphertext
    /// and its tag.
    pub fn seal(&self, name: &str, value: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = value.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Unopenable)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(hex::encode(out))
    }

    /// The value `sealed` holds, if it was sealed for `name` under this key.
    pub fn open(&self, name: &str, sealed: &str) -> Result<String, SealError> {
        let bytes = hex::decode(sealed).map_err(|_| SealError::Unopenable)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Unopenable);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unopenable)?;
        let mut data = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut data)
            .map_err(|_| SealError::Unopenable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Unopenable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_name() {
        let key = SealKey::from_hex(KEY).unwrap();
        let sealed = key.seal("TOKEN", "hunter22").unwrap();
        assert!(!sealed.contains(&hex::encode("hunter22")));
        assert_ne!(
            sealed,
            key.seal("TOKEN", "hunter22").unwrap(),
            "fresh nonce each time"
        );
        assert_eq!(key.open("TOKEN", &sealed).unwrap(), "hunter22");
        assert!(key.open("OTHER", &sealed).is_err(), "bound to its name");
        let other = SealKey::from_hex(&KEY.replace("00", "ff")).unwrap();
        assert!(other.open("TOKEN", &sealed).is_err());
        assert!(key.open("TOKEN", "zz").is_err());
        assert!(SealKey::from_hex("abcd").is_err());
        assert!(SealKey::from_hex(&"g".repeat(64)).is_err());
    }
}
