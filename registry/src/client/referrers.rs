//! Attaching artifacts to a manifest and finding them again: the referrers
//! API where the registry has it, else the OCI 1.1 tag schema (`sha256-<hex>`
//! naming an index of the referrers).

use super::error::ClientError;
use super::registry::Registry;
use crate::digest::Digest;
use crate::manifest::{referrers_tag, Descriptor, Index, Manifest, EMPTY_CONFIG};
use crate::media;
use std::collections::BTreeMap;

/// How an attachment was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Via {
    /// The registry indexed the subject itself (OCI 1.1 referrers API).
    ReferrersApi,
    /// The client maintained the `sha256-<hex>` tag index.
    TagSchema,
}

/// Push a one-layer artifact whose subject is `subject`.
pub fn attach(
    reg: &Registry,
    subject: &Descriptor,
    artifact_type: &str,
    layer_media_type: &str,
    layer: &[u8],
    annotations: BTreeMap<String, String>,
) -> Result<(Digest, Via), ClientError> {
    let config = reg.put_small_blob(EMPTY_CONFIG)?;
    debug_assert_eq!(config, Descriptor::empty_config().digest);
    let layer_digest = reg.put_small_blob(layer)?;
    let mut m = Manifest::new(
        Some(artifact_type),
        Descriptor::empty_config(),
        vec![Descriptor::new(
            layer_media_type,
            layer_digest,
            layer.len() as u64,
        )],
    );
    let mut subj = subject.clone();
    subj.annotations.clear();
    subj.artifact_type = None;
    m.subject = Some(subj);
    m.annotations = annotations.clone();
    let bytes = m.to_bytes();
    let digest = Digest::of_bytes(&bytes);
    let (d, indexed) = reg.put_manifest(&digest.to_string(), &bytes, media::OCI_MANIFEST)?;
    if indexed {
        return Ok((d, Via::ReferrersApi));
    }
    // No OCI-Subject header: keep the fallback index up to date ourselves.
    let tag = referrers_tag(&subject.digest);
    let mut idx = match reg.get_manifest(&tag)? {
        Some((b, _, _)) => {
            serde_json::from_slice::<Index>(&b).unwrap_or_else(|_| Index::new(vec![]))
        }
        None => Index::new(vec![]),
    };
    if !idx.manifests.iter().any(|x| x.digest == d) {
        let mut desc = Descriptor::new(media::OCI_MANIFEST, d.clone(), bytes.len() as u64);
        desc.artifact_type = Some(artifact_type.to_string());
        desc.annotations = annotations;
        idx.manifests.push(desc);
    }
    reg.put_manifest(&tag, &idx.to_bytes(), media::OCI_INDEX)?;
    Ok((d, Via::TagSchema))
}

/// Referrers of `subject`: API first, then the tag schema. Filtering by
/// artifact type is done here too, since registries may ignore the filter.
pub fn list(
    reg: &Registry,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<(Vec<Descriptor>, Via), ClientError> {
    let (all, via) = match reg.referrers(subject, artifact_type)? {
        Some(idx) => (idx.manifests, Via::ReferrersApi),
        None => {
            let found = reg.get_manifest(&referrers_tag(subject))?;
            let idx = found.and_then(|(b, _, _)| serde_json::from_slice::<Index>(&b).ok());
            (idx.map(|i| i.manifests).unwrap_or_default(), Via::TagSchema)
        }
    };
    let filtered = all
        .into_iter()
        .filter(|d| match artifact_type {
            None => true,
            Some(a) => d.artifact_type.as_deref() == Some(a),
        })
        .collect();
    Ok((filtered, via))
}
