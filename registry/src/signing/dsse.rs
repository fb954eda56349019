//! DSSE envelopes inside sigstore bundles (v0.3, public-key verification material).

use super::keys::{SigningKey, VerifyingKey};
use crate::media;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("signature bundle is not valid JSON: {0}")]
    BadJson(String),
    #[error("signature bundle has media type {0:?}, expected {exp}", exp = media::SIGSTORE_BUNDLE)]
    BadMediaType(String),
    #[error("signature bundle has no DSSE signature")]
    NoSignature,
    #[error("signature bundle payload is not valid base64")]
    BadBase64,
    #[error("signature payload type is {0:?}, expected {IN_TOTO_PAYLOAD_TYPE}")]
    PayloadType(String),
    #[error(
        "signature was made by a key that is not trusted (key hint {hint}); trusted: {trusted}"
    )]
    UntrustedKey { hint: String, trusted: String },
    #[error("signature does not verify with the trusted key {hint}: forged or altered")]
    BadSignature { hint: String },
    #[error("no trusted keys given")]
    NoTrustedKeys,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(rename = "verificationMaterial")]
    pub verification_material: VerificationMaterial,
    #[serde(rename = "dsseEnvelope")]
    pub dsse_envelope: Envelope,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerificationMaterial {
    #[serde(rename = "publicKey", default)]
    pub public_key: PublicKeyId,
    #[serde(rename = "tlogEntries", default)]
    pub tlog_entries: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublicKeyId {
    #[serde(default)]
    pub hint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    pub sig: String,
    #[serde(default)]
    pub keyid: String,
}

/// DSSE pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

impl Bundle {
    /// Sign an in-toto statement (its exact JSON bytes).
    pub fn sign(key: &SigningKey, statement: &[u8]) -> Bundle {
        let sig = key.sign_der(&pae(IN_TOTO_PAYLOAD_TYPE, statement));
        Bundle {
            media_type: media::SIGSTORE_BUNDLE.to_string(),
            verification_material: VerificationMaterial {
                public_key: PublicKeyId {
                    hint: key.verifying_key().hint(),
                },
                tlog_entries: Vec::new(),
            },
            dsse_envelope: Envelope {
                payload: B64.encode(statement),
                payload_type: IN_TOTO_PAYLOAD_TYPE.to_string(),
                signatures: vec![EnvelopeSignature {
                    sig: B64.encode(sig),
                    keyid: String::new(),
                }],
            },
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Bundle, SignError> {
        let b: Bundle =
            serde_json::from_slice(bytes).map_err(|e| SignError::BadJson(e.to_string()))?;
        if b.media_type != media::SIGSTORE_BUNDLE {
            return Err(SignError::BadMediaType(b.media_type));
        }
        Ok(b)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The statement bytes, without checking the signature (for display only).
    pub fn payload_unverified(&self) -> Result<Vec<u8>, SignError> {
        B64.decode(&self.dsse_envelope.payload)
            .map_err(|_| SignError::BadBase64)
    }

    /// Check the signature against `trusted` keys and return the signed statement bytes.
    /// The key hint picks the key; a bundle without a hint is tried against each.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<(Vec<u8>, VerifyingKey), SignError> {
        if trusted.is_empty() {
            return Err(SignError::NoTrustedKeys);
        }
        let env = &self.dsse_envelope;
        if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(SignError::PayloadType(env.payload_type.clone()));
        }
        let sig = env.signatures.first().ok_or(SignError::NoSignature)?;
        let sig = B64.decode(&sig.sig).map_err(|_| SignError::BadBase64)?;
        let payload = self.payload_unverified()?;
        let msg = pae(&env.payload_type, &payload);
        let hint = &self.verification_material.public_key.hint;
        let candidates: Vec<&VerifyingKey> = if hint.is_empty() {
            trusted.iter().collect()
        } else {
            trusted.iter().filter(|k| &k.hint() == hint).collect()
        };
        if candidates.is_empty() {
            let trusted = trusted
                .iter()
                .map(|k| k.hint())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(SignError::UntrustedKey {
                hint: hint.clone(),
                trusted,
            });
        }
        for k in candidates {
            if k.verify_der(&msg, &sig) {
                return Ok((payload, k.clone()));
            }
        }
        Err(SignError::BadSignature { hint: hint.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::keys::Curve;

    #[test]
    fn pae_matches_dsse_spec_example() {
        // From the DSSE protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn sign_verify_and_reject() {
        let k = SigningKey::generate(Curve::P256);
        let b = Bundle::sign(&k, b"{\"a\":1}");
        let json = b.to_json();
        let b2 = Bundle::from_json(&json).unwrap();
        let (payload, _) = b2.verify(&[k.verifying_key()]).unwrap();
        assert_eq!(payload, b"{\"a\":1}");
        let other = SigningKey::generate(Curve::P256).verifying_key();
        assert!(matches!(
            b2.verify(std::slice::from_ref(&other)),
            Err(SignError::UntrustedKey { .. })
        ));
        let mut forged = b2.clone();
        forged.dsse_envelope.payload = B64.encode(b"{\"a\":2}");
        assert!(matches!(
            forged.verify(&[k.verifying_key()]),
            Err(SignError::BadSignature { .. })
        ));
    }
}
