//! The key hierarchy of an encrypted volume (docs/encryption.md): a random
//! data key per volume, the LUKS2 passphrase, kept only wrapped, with
//! XChaCha20-Poly1305 under a key-encryption key (KEK) derived with
//! HKDF-SHA256 from the node-stage Secret. The volume id is the AEAD's
//! associated data, so a wrapped key copied onto another image does not
//! unwrap there. Clear keys live in zeroized memory only.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The node-stage Secret's key that holds the KEK material.
pub(crate) const SECRET_KEY: &str = "encryptionKEK";
/// The least KEK material accepted: the wrapped key is on the pool, so a
/// guessable Secret would let whoever reads the pool search for it.
pub(crate) const MIN_SECRET_BYTES: usize = 32;
/// The data key's length: the LUKS2 passphrase, 512 random bits.
const DATA_KEY_BYTES: usize = 64;
const NONCE_BYTES: usize = 24;
/// The stored form's version tag: `v1:<kek id>:<nonce>:<ciphertext>`.
const FORMAT: &str = "v1";

/// A volume's data key, in the clear: zeroized when dropped.
pub(crate) struct DataKey(Zeroizing<Vec<u8>>);

impl DataKey {
    /// A fresh key from the OS RNG.
    pub(crate) fn generate() -> Result<Self, String> {
        let mut key = Zeroizing::new(vec![0u8; DATA_KEY_BYTES]);
        getrandom::getrandom(&mut key).map_err(|e| format!("the OS random number generator failed: {e}"))?;
        Ok(DataKey(key))
    }

    /// The bytes cryptsetup reads as the passphrase (on its stdin).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(redacted)")
    }
}

/// The key-encryption key from a node-stage Secret, with its public id
/// (which KEK wrapped a key, for rotation and a precise error).
#[derive(Clone)]
pub(crate) struct Kek {
    key: Zeroizing<[u8; 32]>,
    id: String,
}

impl Kek {
    /// Derives the KEK from the Secret's value; too short a value is refused.
    pub(crate) fn from_secret(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!("{SECRET_KEY} holds {} bytes, fewer than the {MIN_SECRET_BYTES} required", secret.len()));
        }
        let hkdf = Hkdf::<Sha256>::new(None, secret);
        let mut key = Zeroizing::new([0u8; 32]);
        let mut id = [0u8; 8];
        // Both lengths are far below HKDF-SHA256's limit of 8160 bytes.
        hkdf.expand(b"swell volume kek v1", key.as_mut()).map_err(|e| e.to_string())?;
        hkdf.expand(b"swell volume kek id v1", &mut id).map_err(|e| e.to_string())?;
        Ok(Kek { key, id: id.iter().map(|b| format!("{b:02x}")).collect() })
    }

    /// The KEK's id: 16 hex digits that reveal nothing of the key.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The stored form of `data_key` for `volume`.
    pub(crate) fn wrap(&self, volume: &str, data_key: &DataKey) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut nonce).map_err(|e| format!("the OS random number generator failed: {e}"))?;
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: data_key.bytes(), aad: volume.as_bytes() })
            .map_err(|_| "sealing the data key failed".to_owned())?;
        Ok(format!("{FORMAT}:{}:{}:{}", self.id, B64.encode(nonce), B64.encode(sealed)))
    }

    /// The data key in `stored`, which must have been wrapped for `volume`
    /// under this KEK.
    pub(crate) fn unwrap(&self, volume: &str, stored: &str) -> Result<DataKey, UnwrapError> {
        let parts: Vec<&str> = stored.trim().split(':').collect();
        let [FORMAT, id, nonce, sealed] = parts.as_slice() else {
            return Err(UnwrapError::Malformed("not v1:<kek id>:<nonce>:<ciphertext>".into()));
        };
        if *id != self.id {
            return Err(UnwrapError::OtherKek { stored: (*id).to_owned(), given: self.id.clone() });
        }
        let nonce = B64.decode(nonce).map_err(|e| UnwrapError::Malformed(format!("nonce: {e}")))?;
        let sealed = B64.decode(sealed).map_err(|e| UnwrapError::Malformed(format!("ciphertext: {e}")))?;
        if nonce.len() != NONCE_BYTES {
            return Err(UnwrapError::Malformed(format!("nonce of {} bytes", nonce.len())));
        }
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let opened = cipher.decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed, aad: volume.as_bytes() }).map_err(|_| UnwrapError::Rejected)?;
        Ok(DataKey(Zeroizing::new(opened)))
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl PartialEq for Kek {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Kek {}

/// Why a stored key did not unwrap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UnwrapError {
    /// Wrapped under another KEK (the Secret is not the one it was made with).
    #[error("the data key was wrapped under KEK {stored}, and the node-stage secret is KEK {given}")]
    OtherKek { stored: String, given: String },
    /// Same KEK id, but authentication failed: tampered, or moved from another volume.
    #[error("the wrapped data key does not authenticate for this volume (altered, or copied from another volume)")]
    Rejected,
    /// Not in the stored form.
    #[error("the stored data key is malformed: {0}")]
    Malformed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(fill: u8) -> Kek {
        Kek::from_secret(&[fill; 32]).expect("kek")
    }

    #[test]
    fn a_wrapped_key_unwraps_only_with_its_kek_for_its_volume() {
        let key = DataKey::generate().expect("key");
        let stored = kek(1).wrap("rbd:c:p:a", &key).expect("wrap");
        assert_eq!(kek(1).unwrap("rbd:c:p:a", &stored).expect("unwraps").bytes(), key.bytes());
        assert!(matches!(kek(2).unwrap("rbd:c:p:a", &stored), Err(UnwrapError::OtherKek { .. })));
        assert_eq!(kek(1).unwrap("rbd:c:p:b", &stored).err(), Some(UnwrapError::Rejected), "another volume's key");
        let mut flipped: Vec<char> = stored.chars().collect();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == 'A' { 'B' } else { 'A' };
        let flipped: String = flipped.into_iter().collect();
        assert!(kek(1).unwrap("rbd:c:p:a", &flipped).is_err(), "an altered ciphertext");
        assert!(matches!(kek(1).unwrap("rbd:c:p:a", "v1:zz"), Err(UnwrapError::Malformed(_))));
    }

    #[test]
    fn the_stored_form_holds_neither_the_key_nor_the_kek() {
        let key = DataKey::generate().expect("key");
        let secret = [7u8; 40];
        let kek = Kek::from_secret(&secret).expect("kek");
        let stored = kek.wrap("v", &key).expect("wrap");
        for clear in [B64.encode(key.bytes()), B64.encode(secret), B64.encode(kek.key.as_ref())] {
            assert!(!stored.contains(&clear[..20]), "{stored} shows {clear}");
        }
        assert!(stored.starts_with(&format!("v1:{}:", kek.id())), "{stored}");
        assert_eq!(kek.id().len(), 16);
        assert!(!format!("{kek:?} {key:?}").contains(&B64.encode(key.bytes())[..8]), "Debug hides the keys");
        assert_ne!(DataKey::generate().expect("key").bytes(), key.bytes(), "fresh keys differ");
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = Kek::from_secret(b"password").expect_err("too short");
        assert!(err.contains(SECRET_KEY) && err.contains("32"), "{err}");
    }
}
