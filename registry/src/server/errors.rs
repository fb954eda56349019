//! The distribution-spec error codes and their HTTP status.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    RangeInvalid,
    TooLarge,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid | Code::RangeInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid | Code::TooLarge => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::Internal => "UNKNOWN",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Code::BlobUnknown
            | Code::BlobUploadUnknown
            | Code::ManifestUnknown
            | Code::NameUnknown => 404,
            Code::Unauthorized => 401,
            Code::Denied => 403,
            Code::Unsupported => 405,
            Code::RangeInvalid => 416,
            Code::TooLarge => 413,
            Code::Internal => 500,
            _ => 400,
        }
    }
}

/// A failed request: code, message, and the status it is answered with.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// `{"errors":[{"code":..,"message":..,"detail":..}]}`
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"errors": [{"code": self.code.as_str(), "message": self.message, "detail": null}]}))
            .unwrap_or_default()
    }
}

impl From<super::storage::StorageError> for ApiError {
    fn from(e: super::storage::StorageError) -> ApiError {
        use super::storage::StorageError as E;
        let code = match &e {
            E::BlobUnknown(_) => Code::BlobUnknown,
            E::UploadUnknown(_) => Code::BlobUploadUnknown,
            E::DigestMismatch { .. } => Code::DigestInvalid,
            E::ManifestUnknown(_) => Code::ManifestUnknown,
            E::ManifestInvalid(_) => Code::ManifestInvalid,
            E::ManifestBlobUnknown(_) => Code::ManifestBlobUnknown,
            E::NameUnknown(_) => Code::NameUnknown,
            E::RangeMismatch { .. } => Code::RangeInvalid,
            E::Io { .. } => Code::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}
