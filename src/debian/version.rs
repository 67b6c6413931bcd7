//! Debian version numbers (`[epoch:]upstream[-revision]`) with dpkg's ordering.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A parsed Debian version; ordering and equality follow `dpkg --compare-versions`.
///
/// Equality is dpkg equality, so `1.0`, `0:1.0`, `1.0-0` and `1.00` are all equal;
/// `Display` still prints the text exactly as it was parsed.
#[derive(Clone, Debug)]
pub struct Version {
    raw: String,
    epoch: u32,
    upstream_start: usize,
    upstream_end: usize,
}

/// A version string that violates Debian policy's syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Debian version `{text}`: {reason}")]
pub struct VersionError {
    /// The offending version text.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Version {
    /// The epoch (0 when absent).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The upstream part.
    pub fn upstream(&self) -> &str {
        &self.raw[self.upstream_start..self.upstream_end]
    }

    /// The Debian revision, if the version has one.
    pub fn revision(&self) -> Option<&str> {
        (self.upstream_end < self.raw.len()).then(|| &self.raw[self.upstream_end + 1..])
    }

    /// The version text as parsed.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, VersionError> {
        let err = |reason| VersionError {
            text: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(err("contains whitespace"));
        }
        let (epoch, upstream_start) = match s.find(':') {
            Some(i) => {
                let e = &s[..i];
                if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("epoch is not a number"));
                }
                (e.parse::<u32>().map_err(|_| err("epoch too large"))?, i + 1)
            }
            None => (0, 0),
        };
        let rest = &s[upstream_start..];
        let upstream_end = match rest.rfind('-') {
            Some(i) => upstream_start + i,
            None => s.len(),
        };
        let upstream = &s[upstream_start..upstream_end];
        if upstream.is_empty() {
            return Err(err("empty upstream version"));
        }
        if !upstream.as_bytes()[0].is_ascii_digit() {
            return Err(err("upstream version does not start with a digit"));
        }
        if !upstream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~-:".contains(&b))
        {
            return Err(err("invalid character in upstream version"));
        }
        if upstream_end < s.len() {
            let rev = &s[upstream_end + 1..];
            if rev.is_empty() {
                return Err(err("empty revision"));
            }
            if !rev
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".+~".contains(&b))
            {
                return Err(err("invalid character in revision"));
            }
        }
        Ok(Version {
            raw: s.to_string(),
            epoch,
            upstream_start,
            upstream_end,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream(), other.upstream()))
            // An absent revision compares like an empty one, which dpkg treats as equal to "0".
            .then_with(|| {
                verrevcmp(
                    self.revision().unwrap_or(""),
                    other.revision().unwrap_or(""),
                )
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

/// Weight of a non-digit character: `~` sorts before the end of the string,
/// letters before everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// dpkg's comparison of one version component: alternating non-digit and digit runs.
fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let is_digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !is_digit(a, i)) || (j < b.len() && !is_digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while is_digit(a, i) && is_digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if is_digit(a, i) {
            return Ordering::Greater;
        }
        if is_digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn parses_parts() {
        let x = v("2:1.2-3-4ubuntu1");
        assert_eq!(x.epoch(), 2);
        assert_eq!(x.upstream(), "1.2-3");
        assert_eq!(x.revision(), Some("4ubuntu1"));
        assert_eq!(x.to_string(), "2:1.2-3-4ubuntu1");
        let y = v("7.88.1");
        assert_eq!((y.epoch(), y.upstream(), y.revision()), (0, "7.88.1", None));
    }

    #[test]
    fn rejects_bad_versions_naming_them() {
        for bad in [
            "", "a1.0", "1.0-", "x:1.0", "1:", "1.0 2", "1.0_1", "1.0-a_b", "-1",
        ] {
            let e = bad.parse::<Version>().unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn serde_round_trip_keeps_text() {
        let json = serde_json::to_string(&v("1:2.0-1")).unwrap();
        assert_eq!(json, "\"1:2.0-1\"");
        let back: Version = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_str(), "1:2.0-1");
        let err = serde_json::from_str::<Version>("\"x y\"").unwrap_err();
        assert!(err.to_string().contains("`x y`"), "{err}");
    }

    #[test]
    fn comparison_table() {
        use Ordering::*;
        let table = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0-0", Equal),
            ("0:1.0", "1.0", Equal),
            ("1.00", "1.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0a", "1.0+", Less),
            ("1.0a", "1.0.", Less),
            ("1.10", "1.9", Greater),
            ("1:0.1", "9.9", Greater),
            ("2.36.1-8", "2.36.1-8+deb12u1", Less),
            ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", Less),
            ("1.2.3-1", "1.2.3-1~bpo12+1", Greater),
            ("252.22-1~deb12u1", "252.22-1", Less),
            ("1:2.39.5-0+deb12u2", "1:2.39.2-1.1", Greater),
            ("3.0.11-1~deb12u2", "3.0.15-1~deb12u1", Less),
            ("1.0-1", "1.0-1.1", Less),
            ("10", "9", Greater),
        ];
        for (a, b, want) in table {
            assert_eq!(v(a).cmp(&v(b)), want, "{a} vs {b}");
            assert_eq!(v(b).cmp(&v(a)), want.reverse(), "{b} vs {a}");
        }
    }

    /// Cross-checks a few hundred generated pairs against the real `dpkg --compare-versions`.
    #[test]
    fn agrees_with_dpkg() {
        // Without dpkg every comparison below would fail as a bogus mismatch: say why instead.
        let dpkg = Command::new("dpkg").arg("--version").output();
        assert!(
            dpkg.is_ok_and(|o| o.status.success()),
            "this test needs dpkg on PATH: apt-get install dpkg"
        );
        let parts = [
            "0",
            "1",
            "1.0",
            "1.0~rc1",
            "1.0+b1",
            "1.00",
            "1.a",
            "1.0a",
            "1.0.1",
            "1~",
            "2:1",
            "1:1.0",
            "1.0-1",
            "1.0-0",
            "1.0-1~bpo1",
            "1.0-1+deb12u1",
            "1.0-10",
            "1.0-9",
            "1a-1",
            "1+-1",
        ];
        let mut pairs = Vec::new();
        for a in parts {
            for b in parts {
                pairs.push((a, b));
            }
        }
        // One shell process keeps 400 dpkg invocations cheap.
        let script: String = pairs
            .iter()
            .map(|(a, b)| {
                format!(
                    "if dpkg --compare-versions '{a}' lt '{b}'; then echo '<'; \
                     elif dpkg --compare-versions '{a}' eq '{b}'; then echo '='; else echo '>'; fi\n"
                )
            })
            .collect();
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("this test needs dpkg and sh on PATH");
        assert!(
            out.status.success(),
            "dpkg failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answers: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            answers.len(),
            pairs.len(),
            "dpkg answered {} of {}",
            answers.len(),
            pairs.len()
        );
        for ((a, b), ans) in pairs.iter().zip(&answers) {
            let ours = match v(a).cmp(&v(b)) {
                Ordering::Less => "<",
                Ordering::Equal => "=",
                Ordering::Greater => ">",
            };
            assert_eq!(ours, ans, "{a} vs {b}");
        }
    }
}
