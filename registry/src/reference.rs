//! Repository names, tags and `host[:port]/name[:tag][@digest]` references,
//! validated by the OCI distribution-spec grammar.

use crate::digest::Digest;
use std::fmt;

/// Longest repository name accepted (CNCF distribution's limit).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("invalid repository name {0:?}: components are [a-z0-9]+ joined by '.', '_', '__' or '-', separated by '/', at most 255 characters")]
    Name(String),
    #[error("invalid tag {0:?}: expected [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    Tag(String),
    #[error(
        "invalid reference {0:?}: expected HOST[:PORT]/NAME[:TAG] or HOST[:PORT]/NAME@sha256:HEX"
    )]
    Reference(String),
    #[error("invalid digest in reference {0:?}")]
    Digest(String),
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
pub fn validate_name(name: &str) -> Result<(), RefError> {
    let bad = || RefError::Name(name.to_string());
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad());
    }
    for comp in name.split('/') {
        if !valid_component(comp) {
            return Err(bad());
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

pub fn validate_tag(tag: &str) -> Result<(), RefError> {
    let b = tag.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|&x| x.is_ascii_alphanumeric() || x == b'_');
    let rest_ok = b
        .iter()
        .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-');
    if first_ok && rest_ok && b.len() <= MAX_TAG_LEN {
        Ok(())
    } else {
        Err(RefError::Tag(tag.to_string()))
    }
}

/// A parsed `host[:port]/name[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub host: String,
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, RefError> {
        let bad = || RefError::Reference(s.to_string());
        let (host, rest) = s.split_once('/').ok_or_else(bad)?;
        // The registry host is explicit: quern never guesses Docker Hub.
        if host.is_empty() || !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad());
        }
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| RefError::Digest(s.to_string()))?,
                ),
            ),
            None => (rest, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (rest, None),
        };
        validate_name(name)?;
        if let Some(t) = &tag {
            validate_tag(t)?;
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            host: host.to_string(),
            name: name.to_string(),
            tag,
            digest,
        })
    }

    /// What to put in `/v2/<name>/manifests/<here>`: the digest when given, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "ns/model", "a.b_c__d---e/f0", "library/smollm2-135m"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "ns/../x", "..", "a/", "/a", "a..b", "a___b", "-a", "a-", "a//b", "Model",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags() {
        assert!(validate_tag("v1.0_Q4-K").is_ok());
        assert!(validate_tag("_x").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a:b"] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
        assert!(validate_tag(&"t".repeat(128)).is_ok());
        assert!(validate_tag(&"t".repeat(129)).is_err());
    }

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/ns/model:q4").unwrap();
        assert_eq!(
            (r.host.as_str(), r.name.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "ns/model", Some("q4"))
        );
        let r = Reference::parse("localhost/m").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let d = Digest::of_bytes(b"x");
        let r = Reference::parse(&format!("reg.example:443/m@{d}")).unwrap();
        assert_eq!(r.manifest_ref(), d.to_string());
        assert!(Reference::parse("model:tag").is_err());
        assert!(Reference::parse("h:1/UPPER:tag").is_err());
        assert!(Reference::parse("h:1/m@sha256:zz").is_err());
    }
}
