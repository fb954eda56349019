//! Media types and annotations used by quern artifacts.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (also the referrers response and the tag-schema fallback).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The empty config of artifacts that have none (`{}`).
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Docker schema 2 manifest, accepted on pull from registries that rewrite.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// CNCF ModelPack artifact type and config.
pub const MODEL_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const MODEL_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
pub const MODEL_WEIGHT_RAW: &str = "application/vnd.cncf.model.weight.v1.raw";
pub const MODEL_WEIGHT_CONFIG_RAW: &str = "application/vnd.cncf.model.weight.config.v1.raw";
pub const MODEL_DOC_RAW: &str = "application/vnd.cncf.model.doc.v1.raw";
pub const MODEL_CODE_RAW: &str = "application/vnd.cncf.model.code.v1.raw";
/// Suffix for a zstd-compressed raw file (the structured-syntax suffix the OCI image spec uses).
pub const ZSTD_SUFFIX: &str = "+zstd";
/// The file path of a layer inside the model folder (ModelPack).
pub const ANNOTATION_FILEPATH: &str = "org.cncf.model.filepath";
/// Standard OCI title annotation (shown by generic tools).
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";

/// Sigstore bundle: the model-signing signature and the signed provenance.
pub const SIGSTORE_BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// An unsigned in-toto statement (provenance pushed without a key).
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// Annotation naming the predicate type inside a bundle (as cosign does).
pub const ANNOTATION_PREDICATE_TYPE: &str = "dev.sigstore.bundle.predicateType";
/// Artifact type of the provenance referrer.
pub const PROVENANCE_ARTIFACT: &str = "application/vnd.in-toto+json";
