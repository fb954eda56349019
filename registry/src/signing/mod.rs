//! Signatures compatible with the OpenSSF model-signing tool (PyPI `model-signing`):
//! a sigstore bundle holding a DSSE envelope over an in-toto statement, signed
//! with an ECDSA key (P-256/SHA-256 or P-384/SHA-384) in PEM.

pub mod dsse;
pub mod keys;
pub mod model_sig;

pub use dsse::{Bundle, SignError};
pub use keys::{KeyError, SigningKey, VerifyingKey};
pub use model_sig::{ModelSignature, Resource};
