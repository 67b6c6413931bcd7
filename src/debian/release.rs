//! InRelease files: OpenPGP verification against a keyring, and the signed Release fields.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{PublicKey, Signature, SignatureType};
use pgp::types::{KeyDetails, Timestamp};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::debian::control;
use crate::digest::Sha256Digest;

/// The Debian archive keyring shipped by `debian-archive-keyring`.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Errors from keyrings, signatures and Release contents.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The keyring file could not be read.
    #[error("keyring {path}: {source}")]
    KeyringIo {
        /// The keyring file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The keyring holds no usable OpenPGP key.
    #[error("keyring {path}: {message}")]
    Keyring {
        /// The keyring file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The document is not a clearsigned OpenPGP message.
    #[error("{source_name}: not a valid clearsigned InRelease: {message}")]
    NotClearsigned {
        /// URL or file of the document.
        source_name: String,
        /// Parser message.
        message: String,
    },
    /// A signature by a key in the keyring does not verify (tampering or corruption).
    #[error("{source_name}: BAD signature by key {key} from keyring {keyring}")]
    BadSignature {
        /// URL or file of the document.
        source_name: String,
        /// Issuer of the failing signature.
        key: String,
        /// The keyring used.
        keyring: PathBuf,
    },
    /// No signature was made by a usable key of the keyring.
    #[error(
        "{source_name}: no valid signature by a key in keyring {keyring} (signed by: {issuers})"
    )]
    Untrusted {
        /// URL or file of the document.
        source_name: String,
        /// The keyring used.
        keyring: PathBuf,
        /// Issuers of the signatures present, or `nobody`.
        issuers: String,
    },
    /// The signed text is not a well-formed Release.
    #[error("{source_name}: malformed Release: {message}")]
    Malformed {
        /// URL or file of the document.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The Release is not from Debian.
    #[error("{source_name}: Origin is `{origin}`, expected `Debian`")]
    NotDebian {
        /// URL or file of the document.
        source_name: String,
        /// The Origin field found.
        origin: String,
    },
    /// The Release describes another suite than the one requested.
    #[error(
        "{source_name}: Release is for suite `{suite}` (codename `{codename}`), expected `{expected}`"
    )]
    WrongSuite {
        /// URL or file of the document.
        source_name: String,
        /// The suite requested.
        expected: String,
        /// Suite field found.
        suite: String,
        /// Codename field found.
        codename: String,
    },
    /// The Release is past its Valid-Until date.
    #[error(
        "{source_name}: Release for suite `{suite}` expired at {valid_until} (Valid-Until); the mirror is stale or replaying old metadata"
    )]
    Expired {
        /// URL or file of the document.
        source_name: String,
        /// The suite.
        suite: String,
        /// The Valid-Until value as written.
        valid_until: String,
    },
}

/// OpenPGP public keys trusted to sign archive metadata.
#[derive(Clone, Debug)]
pub struct Keyring {
    path: PathBuf,
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Load a binary or ASCII-armoured keyring holding one or more keys.
    pub fn load(path: &Path) -> Result<Self, ReleaseError> {
        let bytes = std::fs::read(path).map_err(|source| ReleaseError::KeyringIo {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse keyring bytes; `path` names them in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, ReleaseError> {
        let err = |message: String| ReleaseError::Keyring {
            path: path.to_path_buf(),
            message,
        };
        let (iter, _) = SignedPublicKey::from_reader_many(bytes).map_err(|e| err(e.to_string()))?;
        // One unparsable key must not make the rest of a multi-key keyring unusable.
        let keys: Vec<SignedPublicKey> = iter.filter_map(Result::ok).collect();
        if keys.is_empty() {
            return Err(err("no OpenPGP public keys found".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// The file the keys came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fingerprints (uppercase hex) of the primary keys.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("{:X}", k.primary_key.fingerprint()))
            .collect()
    }

    /// Every primary key and subkey that may verify data signatures, with its validity window.
    fn signers(&self) -> Vec<Signer<'_>> {
        let mut out = Vec::new();
        for k in &self.keys {
            if !k.details.revocation_signatures.is_empty() {
                continue;
            }
            let self_sigs = k
                .details
                .users
                .iter()
                .flat_map(|u| &u.signatures)
                .chain(&k.details.direct_signatures);
            let expires = expiry(k.primary_key.created_at(), self_sigs);
            out.push(Signer {
                key: SignerKey::Primary(&k.primary_key),
                expires,
            });
            for sub in &k.public_subkeys {
                let revoked = sub
                    .signatures
                    .iter()
                    .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation));
                // Subkeys must be bound by the primary (with a back-signature), or anyone could attach one.
                if revoked || sub.verify_bindings(&k.primary_key).is_err() {
                    continue;
                }
                let expires = expiry(sub.key.created_at(), &sub.signatures);
                out.push(Signer {
                    key: SignerKey::Sub(sub),
                    expires,
                });
            }
        }
        out
    }
}

/// Expiry (seconds since epoch) from the newest self-signature carrying one.
fn expiry<'a>(created: Timestamp, sigs: impl IntoIterator<Item = &'a Signature>) -> Option<u64> {
    let newest = sigs
        .into_iter()
        .max_by_key(|s| s.created().map(|t| t.as_secs()).unwrap_or(0))?;
    newest
        .key_expiration_time()
        .map(|d| u64::from(created.as_secs()) + u64::from(d.as_secs()))
}

enum SignerKey<'a> {
    Primary(&'a PublicKey),
    Sub(&'a SignedPublicSubKey),
}

struct Signer<'a> {
    key: SignerKey<'a>,
    expires: Option<u64>,
}

impl Signer<'_> {
    fn details(&self) -> (pgp::types::KeyId, pgp::types::Fingerprint) {
        match self.key {
            SignerKey::Primary(k) => (k.legacy_key_id(), k.fingerprint()),
            SignerKey::Sub(k) => (k.legacy_key_id(), k.fingerprint()),
        }
    }

    fn issued(&self, sig: &Signature) -> bool {
        let (id, fpr) = self.details();
        sig.issuer_key_id().iter().any(|i| **i == id)
            || sig.issuer_fingerprint().iter().any(|f| **f == fpr)
    }

    fn verify(&self, sig: &Signature, text: &[u8]) -> bool {
        let made = sig.created().map(|t| u64::from(t.as_secs())).unwrap_or(0);
        if self.expires.is_some_and(|e| made > e) {
            return false;
        }
        match self.key {
            SignerKey::Primary(k) => sig.verify(k, text).is_ok(),
            SignerKey::Sub(k) => sig.verify(k, text).is_ok(),
        }
    }
}

/// Check a clearsigned InRelease against `keyring`; returns only the signed text.
///
/// Accepted when at least one signature verifies with a key of the keyring and no signature
/// claiming to come from a keyring key fails. Signatures by keys outside the keyring are
/// ignored, as apt does, so the archive can add its next key before our keyring knows it.
pub fn verify_inrelease(
    keyring: &Keyring,
    inrelease: &[u8],
    source_name: &str,
) -> Result<String, ReleaseError> {
    let text = std::str::from_utf8(inrelease).map_err(|e| ReleaseError::NotClearsigned {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    let (msg, _) =
        CleartextSignedMessage::from_string(text).map_err(|e| ReleaseError::NotClearsigned {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
    let signed = msg.signed_text();
    let signers = keyring.signers();
    let mut good = 0;
    let mut issuers = Vec::new();
    for sig in msg.signatures() {
        let issuer = issuer_name(sig);
        let mine: Vec<&Signer> = signers.iter().filter(|s| s.issued(sig)).collect();
        if mine.is_empty() {
            issuers.push(format!("{issuer} (not in keyring)"));
            continue;
        }
        if !mine.iter().any(|s| s.verify(sig, signed.as_bytes())) {
            return Err(ReleaseError::BadSignature {
                source_name: source_name.to_string(),
                key: issuer,
                keyring: keyring.path.clone(),
            });
        }
        good += 1;
    }
    if good == 0 {
        return Err(ReleaseError::Untrusted {
            source_name: source_name.to_string(),
            keyring: keyring.path.clone(),
            issuers: if issuers.is_empty() {
                "nobody".into()
            } else {
                issuers.join(", ")
            },
        });
    }
    // The message's own line ends were normalised to CRLF for hashing; the parser strips `\r`.
    Ok(signed)
}

fn issuer_name(sig: &Signature) -> String {
    if let Some(f) = sig.issuer_fingerprint().first() {
        return format!("{f:X}");
    }
    match sig.issuer_key_id().first() {
        Some(id) => hex::encode_upper(id.as_ref()),
        None => "<no issuer>".into(),
    }
}

/// Size and digest of one file listed in a Release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleaseFile {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file.
    pub sha256: Sha256Digest,
}

/// The fields of a (verified) Release that hakim relies on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// `Origin`, `Debian` for the official archives.
    pub origin: String,
    /// `Label`, if present.
    pub label: Option<String>,
    /// `Suite`, e.g. `stable`.
    pub suite: String,
    /// `Codename`, e.g. `trixie`.
    pub codename: String,
    /// `Version`, if present.
    pub version: Option<String>,
    /// `Date`, when the archive published it.
    pub date: OffsetDateTime,
    /// `Date` exactly as written (goes into lock files).
    pub date_text: String,
    /// `Valid-Until`, if present.
    pub valid_until: Option<OffsetDateTime>,
    /// `Valid-Until` exactly as written.
    pub valid_until_text: Option<String>,
    /// `Architectures`.
    pub architectures: Vec<String>,
    /// `Components` (security lists them as `updates/main`).
    pub components: Vec<String>,
    /// `Acquire-By-Hash: yes`: files are also served under `by-hash/SHA256/<hex>`.
    pub acquire_by_hash: bool,
    /// `No-Support-for-Architecture-all: Packages`: arch-all packages are in each binary-<arch>.
    pub arch_all_in_arch_indexes: bool,
    /// The `SHA256` list: path relative to the suite directory → size and digest.
    pub sha256: BTreeMap<String, ReleaseFile>,
}

impl Release {
    /// Parse Release text (the signed part of InRelease).
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ReleaseError> {
        let malformed = |message: String| ReleaseError::Malformed {
            source_name: source_name.to_string(),
            message,
        };
        let paras = control::parse(text).map_err(|e| malformed(e.to_string()))?;
        let [p] = paras.as_slice() else {
            return Err(malformed(format!(
                "expected one paragraph, found {}",
                paras.len()
            )));
        };
        let req = |name: &str| {
            p.get(name)
                .map(str::to_string)
                .ok_or_else(|| malformed(format!("missing field {name}")))
        };
        let words = |name: &str| {
            p.get(name)
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let date_text = req("Date")?;
        let date =
            parse_date(&date_text).map_err(|m| malformed(format!("Date `{date_text}`: {m}")))?;
        let valid_until_text = p.get("Valid-Until").map(str::to_string);
        let valid_until = match &valid_until_text {
            Some(v) => {
                Some(parse_date(v).map_err(|m| malformed(format!("Valid-Until `{v}`: {m}")))?)
            }
            None => None,
        };
        let mut sha256 = BTreeMap::new();
        for (i, line) in req("SHA256")?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let bad = || malformed(format!("SHA256 entry {}: `{line}`", i + 1));
            let mut parts = line.split_whitespace();
            let (Some(hash), Some(size), Some(path), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let sha256_digest = hash.parse().map_err(|_| bad())?;
            let size = size.parse().map_err(|_| bad())?;
            sha256.insert(
                path.to_string(),
                ReleaseFile {
                    size,
                    sha256: sha256_digest,
                },
            );
        }
        let yes = |name: &str| {
            p.get(name)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("yes"))
        };
        Ok(Self {
            origin: req("Origin")?,
            label: p.get("Label").map(str::to_string),
            suite: req("Suite")?,
            codename: req("Codename")?,
            version: p.get("Version").map(str::to_string),
            date,
            date_text,
            valid_until,
            valid_until_text,
            architectures: words("Architectures"),
            components: words("Components"),
            acquire_by_hash: yes("Acquire-By-Hash"),
            arch_all_in_arch_indexes: words("No-Support-for-Architecture-all")
                .iter()
                .any(|w| w == "Packages"),
            sha256,
        })
    }

    /// Check origin, suite and (unless `enforce_valid_until` is false) freshness at `now`.
    pub fn check(
        &self,
        expected_suite: &str,
        now: OffsetDateTime,
        enforce_valid_until: bool,
        source_name: &str,
    ) -> Result<(), ReleaseError> {
        if self.origin != "Debian" {
            return Err(ReleaseError::NotDebian {
                source_name: source_name.to_string(),
                origin: self.origin.clone(),
            });
        }
        if self.suite != expected_suite && self.codename != expected_suite {
            return Err(ReleaseError::WrongSuite {
                source_name: source_name.to_string(),
                expected: expected_suite.to_string(),
                suite: self.suite.clone(),
                codename: self.codename.clone(),
            });
        }
        if enforce_valid_until
            && let (Some(until), Some(text)) = (self.valid_until, &self.valid_until_text)
            && until < now
        {
            return Err(ReleaseError::Expired {
                source_name: source_name.to_string(),
                suite: expected_suite.to_string(),
                valid_until: text.clone(),
            });
        }
        Ok(())
    }

    /// The listed size and digest of a path such as `main/binary-amd64/Packages.xz`.
    pub fn file(&self, path: &str) -> Option<&ReleaseFile> {
        self.sha256.get(path)
    }

    /// Whether a component is offered (security lists `updates/main` for `main`).
    pub fn has_component(&self, component: &str) -> bool {
        self.components
            .iter()
            .any(|c| c == component || c.rsplit('/').next() == Some(component))
    }

    /// Whether an architecture is offered.
    pub fn has_architecture(&self, arch: &str) -> bool {
        self.architectures.iter().any(|a| a == arch)
    }
}

/// Parse a Release date such as `Sat, 21 Nov 2026 09:15:44 UTC` (RFC 2822 style).
pub fn parse_date(s: &str) -> Result<OffsetDateTime, String> {
    let s = s.trim();
    // The weekday is redundant; skip it if present.
    let rest = match s.split_once(',') {
        Some((_, rest)) => rest.trim(),
        None => s,
    };
    let parts: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, clock, zone] = parts.as_slice() else {
        return Err("expected `Day, DD Mon YYYY HH:MM:SS ZONE`".into());
    };
    let num = |v: &str, what: &str| v.parse::<u32>().map_err(|_| format!("bad {what} `{v}`"));
    let month = match month.to_ascii_lowercase().as_str() {
        "jan" => Month::January,
        "feb" => Month::February,
        "mar" => Month::March,
        "apr" => Month::April,
        "may" => Month::May,
        "jun" => Month::June,
        "jul" => Month::July,
        "aug" => Month::August,
        "sep" => Month::September,
        "oct" => Month::October,
        "nov" => Month::November,
        "dec" => Month::December,
        other => return Err(format!("bad month `{other}`")),
    };
    let year = i32::try_from(num(year, "year")?).map_err(|e| e.to_string())?;
    let date =
        Date::from_calendar_date(year, month, num(day, "day")? as u8).map_err(|e| e.to_string())?;
    let hms: Vec<&str> = clock.split(':').collect();
    let [h, m, sec] = hms.as_slice() else {
        return Err(format!("bad time `{clock}`"));
    };
    let time = Time::from_hms(
        num(h, "hour")? as u8,
        num(m, "minute")? as u8,
        num(sec, "second")? as u8,
    )
    .map_err(|e| e.to_string())?;
    let offset = match *zone {
        "UTC" | "GMT" | "Z" | "UT" => UtcOffset::UTC,
        z if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let hh = num(&z[1..3], "zone")? as i8;
            let mm = num(&z[3..5], "zone")? as i8;
            let sign = if z.starts_with('-') { -1 } else { 1 };
            UtcOffset::from_hms(sign * hh, sign * mm, 0).map_err(|e| e.to_string())?
        }
        other => return Err(format!("bad time zone `{other}`")),
    };
    Ok(PrimitiveDateTime::new(date, time).assume_offset(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cert-only ed25519 primary key with an ed25519 signing subkey (made with gpg for these tests).
    const TEST_KEYRING_B64: &str = "mDMEawzViRYJKwYBBAHaRw8BAQdA3eSxq57F1g1ahvUWIYsnZDKT5mWGBXiJH2kGcSVS5jG0K0hh\
a2ltIFRlc3QgQXJjaGl2ZSA8YXJjaGl2ZUBtaXJyb3IuZXhhbXBsZT6IlgQTFggAPhYhBMWlNDMu\
y9at0f7z63+3Rta6UpwlBQJrDNWJAhsBBQkPNv63BQsJCAcCBhUKCQgLAgQWAgMBAh4BAheAAAoJ\
EH+3Rta6UpwlSqgA/j9BtsMIya8mL8sPkdln5DA43/apkKXbbT4qRPqQ05d5AP9uGPWgKHwz2aKt\
lOnYCCsP7dAfN8VVjtaR+XL96nz/ALgzBGsM1YkWCSsGAQQB2kcPAQEHQHMboE9GrZr+yutqBb/M\
Zo70g5UGt8tlTLJ/YKT/qxBRiPUEGBYIACYWIQTFpTQzLsvWrdH+8+t/t0bWulKcJQUCawzViQIb\
AgUJDzb+twCBCRB/t0bWulKcJXYgBBkWCAAdFiEEKnYaGhn2qMYrq+1+hdyqB0sJFokFAmsM1YkA\
CgkQhdyqB0sJFoni4gEA/MyU+ysPMjIlawTPci3aQmgW91Iji7j4pruYQFk03bABAOaGifemiO8B\
4xNpeJiQ+AdmarQzBa3fXJsV6GcVnhIOmpkA/3oMaZg72/rTvoz6KLflVAYKzDN8JBLWczK5Ufa4\
9h1WAPwOIFaMgOVbvRBQIFjL0nWdeUJCcRAs+2+GSZryzl/rCg==";

    const RELEASE_BODY: &str = "Origin: Debian
Label: Debian
Suite: stable
Codename: trixie
Date: Sat, 21 Nov 2026 09:15:44 UTC
Valid-Until: Sat, 28 Nov 2026 09:15:44 UTC
Acquire-By-Hash: yes
Architectures: amd64 arm64
Components: main contrib
Description: test
SHA256:
 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855        0 main/binary-amd64/Packages
";

    /// RELEASE_BODY clearsigned by the subkey of the test keyring.
    const SIG_BY_SUBKEY: &str = "-----BEGIN PGP SIGNATURE-----

iHUEARYIAB0WIQQqdhoaGfaoxiur7X6F3KoHSwkWiQUCawzWVAAKCRCF3KoHSwkW
iaXgAP9YTyzYy3Mznztpv2LUyJ1F43/PZeTexXJBSI/2qwT/twEA1i1Hzx+ugm4k
0bXqcuV9RjUx5hxSl98TMlg/54oj+gs=
=/a3T
-----END PGP SIGNATURE-----
";

    /// RELEASE_BODY clearsigned by an unrelated key.
    const SIG_BY_STRANGER: &str = "-----BEGIN PGP SIGNATURE-----

iHUEARYIAB0WIQSg57y0G2eGnoe8uHCk5nRe1qXnRQUCawzWVAAKCRCk5nRe1qXn
RfZvAP0e3Zfe02+SyHqCIRR8gXxieaQ77fW9b36lv5mSbG0EIAEA0GARAJiqKwVn
TwH6vGQ26BLhAPR1CPuC5MS06YzkDgE=
=Olzd
-----END PGP SIGNATURE-----
";

    fn keyring() -> Keyring {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(TEST_KEYRING_B64)
            .unwrap();
        Keyring::from_bytes(&bytes, Path::new("test-keyring.gpg")).unwrap()
    }

    fn clearsigned(body: &str, sig: &str) -> String {
        format!("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{body}{sig}")
    }

    #[test]
    fn subkey_signature_verifies_and_release_parses() {
        let text = verify_inrelease(
            &keyring(),
            clearsigned(RELEASE_BODY, SIG_BY_SUBKEY).as_bytes(),
            "t",
        )
        .unwrap();
        let r = Release::parse(&text, "t").unwrap();
        assert_eq!(r.origin, "Debian");
        assert_eq!(
            (r.suite.as_str(), r.codename.as_str()),
            ("stable", "trixie")
        );
        assert!(r.acquire_by_hash && r.has_component("main") && r.has_architecture("arm64"));
        assert_eq!(r.file("main/binary-amd64/Packages").unwrap().size, 0);
        assert_eq!(r.sha256.len(), 1, "{:?}", r.sha256);
    }

    #[test]
    fn tampered_text_is_a_bad_signature() {
        let body = RELEASE_BODY.replace("Codename: trixie", "Codename: trixiE");
        let err = verify_inrelease(
            &keyring(),
            clearsigned(&body, SIG_BY_SUBKEY).as_bytes(),
            "http://mirror.example/x",
        )
        .unwrap_err();
        assert!(matches!(err, ReleaseError::BadSignature { .. }), "{err}");
        assert!(err.to_string().contains("http://mirror.example/x"), "{err}");
    }

    #[test]
    fn unknown_key_and_unsigned_input_are_refused() {
        let err = verify_inrelease(
            &keyring(),
            clearsigned(RELEASE_BODY, SIG_BY_STRANGER).as_bytes(),
            "f",
        )
        .unwrap_err();
        assert!(matches!(err, ReleaseError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("not in keyring"), "{err}");
        let err = verify_inrelease(&keyring(), RELEASE_BODY.as_bytes(), "f").unwrap_err();
        assert!(matches!(err, ReleaseError::NotClearsigned { .. }), "{err}");
    }

    #[test]
    fn host_keyring_loads_several_keys() {
        let ring = Keyring::load(Path::new(DEFAULT_KEYRING)).unwrap_or_else(|e| {
            panic!("{DEFAULT_KEYRING} is required (package debian-archive-keyring): {e}")
        });
        assert!(ring.fingerprints().len() >= 3, "{:?}", ring.fingerprints());
        let err = Keyring::load(Path::new("/nonexistent/keyring.gpg")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/keyring.gpg"),
            "{err}"
        );
        let err = Keyring::from_bytes(b"not a key", Path::new("junk.gpg")).unwrap_err();
        assert!(err.to_string().contains("junk.gpg"), "{err}");
    }

    #[test]
    fn valid_until_origin_and_suite_are_enforced() {
        let r = Release::parse(RELEASE_BODY, "t").unwrap();
        let before = parse_date("Fri, 27 Nov 2026 00:00:00 UTC").unwrap();
        let after = parse_date("Sun, 29 Nov 2026 00:00:00 UTC").unwrap();
        r.check("trixie", before, true, "t").unwrap();
        r.check("stable", before, true, "t").unwrap();
        let err = r
            .check(
                "trixie",
                after,
                true,
                "http://mirror.example/dists/trixie/InRelease",
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("trixie") && msg.contains("Sat, 28 Nov 2026 09:15:44 UTC"),
            "{msg}"
        );
        r.check("trixie", after, false, "snapshot").unwrap();
        let err = r.check("bookworm", before, true, "t").unwrap_err();
        assert!(matches!(err, ReleaseError::WrongSuite { .. }), "{err}");
        let ubuntu = Release::parse(
            &RELEASE_BODY.replace("Origin: Debian", "Origin: Ubuntu"),
            "t",
        )
        .unwrap();
        assert!(matches!(
            ubuntu.check("trixie", before, true, "t"),
            Err(ReleaseError::NotDebian { .. })
        ));
    }

    #[test]
    fn dates_and_malformed_fields() {
        let d = parse_date("Sat, 21 Nov 2026 09:15:44 UTC").unwrap();
        assert_eq!(d.unix_timestamp(), 1795252544);
        assert_eq!(parse_date("21 Nov 2026 10:15:44 +0100").unwrap(), d);
        assert!(parse_date("2026-11-21").is_err());
        assert!(parse_date("Sat, 31 Feb 2026 09:15:44 UTC").is_err());
        let bad = RELEASE_BODY.replace("        0 main", " zero main");
        let err = Release::parse(&bad, "t").unwrap_err();
        assert!(err.to_string().contains("SHA256 entry 1"), "{err}");
        let err = Release::parse(&RELEASE_BODY.replace("Date:", "Xdate:"), "t").unwrap_err();
        assert!(err.to_string().contains("missing field Date"), "{err}");
    }
}
