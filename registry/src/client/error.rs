//! Client errors, naming the URL, digest or file concerned.

use crate::digest::Digest;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{method} {url}: {msg}")]
    Transport {
        method: String,
        url: String,
        msg: String,
    },
    #[error("{method} {url}: HTTP {status}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: authentication failed: {msg}")]
    Auth { url: String, msg: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("signature check failed for {reference}: {msg}")]
    Signature { reference: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Artifact(#[from] crate::artifact::ArtifactError),
    #[error(transparent)]
    Sign(#[from] crate::signing::model_sig::ModelSigError),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
