//! SHA-256 digests as used by OCI blobs, Debian indexes and the caches.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest([u8; 32]);

/// A digest string that is not 64 lowercase hex characters (optionally prefixed `sha256:`).
#[derive(Debug, thiserror::Error)]
#[error("malformed sha256 `{0}`: expected 64 lowercase hex characters")]
pub struct BadDigest(pub String);

impl Sha256Digest {
    /// Digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Digest of everything a reader yields.
    pub fn of_reader(mut r: impl Read) -> io::Result<Self> {
        let mut w = HashingWriter::new(io::sink());
        io::copy(&mut r, &mut w)?;
        Ok(w.finish().0)
    }

    /// Lowercase hex, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `sha256:<hex>`, the OCI form.
    pub fn oci(&self) -> String {
        format!("sha256:{}", self.hex())
    }

    /// Raw bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Sha256Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, BadDigest> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let valid = hex_part.len() == 64
            && hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(BadDigest(s.to_string()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| BadDigest(s.to_string()))?;
        Ok(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.oci())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.oci())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The digest and byte count so far, and the inner writer.
    pub fn finish(self) -> (Sha256Digest, u64, W) {
        (
            Sha256Digest(self.hasher.finalize().into()),
            self.len,
            self.inner,
        )
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_forms() {
        let d = Sha256Digest::of(b"");
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(d.hex(), hex);
        assert_eq!(hex.parse::<Sha256Digest>().unwrap(), d);
        assert_eq!(format!("sha256:{hex}").parse::<Sha256Digest>().unwrap(), d);
        assert!("sha256:abc".parse::<Sha256Digest>().is_err());
        assert!(hex.to_uppercase().parse::<Sha256Digest>().is_err());
    }
}
