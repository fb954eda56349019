//! ECDSA key pairs in PEM: PKCS#8 (or SEC1) private keys, SubjectPublicKeyInfo public keys.

use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PEM ECDSA P-256 or P-384 private key (PKCS#8 or SEC1)")]
    BadPrivate { path: PathBuf },
    #[error("{path}: not a PEM ECDSA P-256 or P-384 public key (SubjectPublicKeyInfo)")]
    BadPublic { path: PathBuf },
    #[error("cannot encode key: {0}")]
    Encode(String),
}

/// The curves model-signing accepts that quern signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

pub enum SigningKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyingKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl SigningKey {
    pub fn generate(curve: Curve) -> SigningKey {
        let mut rng = rand_core::OsRng;
        match curve {
            Curve::P256 => SigningKey::P256(p256::ecdsa::SigningKey::random(&mut rng)),
            Curve::P384 => SigningKey::P384(p384::ecdsa::SigningKey::random(&mut rng)),
        }
    }

    pub fn from_pem(pem: &str) -> Option<SigningKey> {
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Some(SigningKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Some(SigningKey::P384(k));
        }
        if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
            return Some(SigningKey::P256(k.into()));
        }
        if let Ok(k) = p384::SecretKey::from_sec1_pem(pem) {
            return Some(SigningKey::P384(k.into()));
        }
        None
    }

    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        SigningKey::from_pem(&text).ok_or_else(|| KeyError::BadPrivate { path: path.into() })
    }

    /// PKCS#8 PEM, the form `openssl pkcs8` and Python's cryptography write.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        let pem = match self {
            SigningKey::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            SigningKey::P384(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        pem.map(|z| z.to_string())
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            SigningKey::P256(k) => VerifyingKey::P256(*k.verifying_key()),
            SigningKey::P384(k) => VerifyingKey::P384(*k.verifying_key()),
        }
    }

    /// ECDSA over `msg` with the curve's hash (SHA-256 / SHA-384), DER-encoded.
    pub fn sign_der(&self, msg: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        match self {
            SigningKey::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
            SigningKey::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
        }
    }
}

impl VerifyingKey {
    pub fn from_pem(pem: &str) -> Option<VerifyingKey> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Some(VerifyingKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Some(VerifyingKey::P384(k));
        }
        None
    }

    pub fn load(path: &Path) -> Result<VerifyingKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        VerifyingKey::from_pem(&text).ok_or_else(|| KeyError::BadPublic { path: path.into() })
    }

    /// SubjectPublicKeyInfo PEM with 64-column lines and LF, byte-identical to
    /// what Python's cryptography writes (the key hint is a hash of this text).
    pub fn to_pem(&self) -> Result<String, KeyError> {
        let pem = match self {
            VerifyingKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
            VerifyingKey::P384(k) => k.to_public_key_pem(LineEnding::LF),
        };
        pem.map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// `verificationMaterial.publicKey.hint`: sha256 hex of the PEM text.
    pub fn hint(&self) -> String {
        hex::encode(Sha256::digest(self.to_pem().unwrap_or_default().as_bytes()))
    }

    pub fn verify_der(&self, msg: &[u8], der: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match self {
            VerifyingKey::P256(k) => {
                p256::ecdsa::Signature::from_der(der).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
            VerifyingKey::P384(k) => {
                p384::ecdsa::Signature::from_der(der).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_signature() {
        for curve in [Curve::P256, Curve::P384] {
            let k = SigningKey::generate(curve);
            let pem = k.to_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let k2 = SigningKey::from_pem(&pem).unwrap();
            let vk = k2.verifying_key();
            assert_eq!(vk, k.verifying_key());
            let pub_pem = vk.to_pem().unwrap();
            assert!(pub_pem.ends_with("-----END PUBLIC KEY-----\n"));
            assert_eq!(VerifyingKey::from_pem(&pub_pem).unwrap(), vk);
            let sig = k.sign_der(b"message");
            assert!(vk.verify_der(b"message", &sig));
            assert!(!vk.verify_der(b"messagE", &sig));
            let other = SigningKey::generate(curve).verifying_key();
            assert!(!other.verify_der(b"message", &sig));
        }
    }
}
