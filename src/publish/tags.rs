//! Tag helpers: template expansion, release tags, and the GitHub step summary.

use std::fmt::Write as _;
use std::sync::LazyLock;

use regex::Regex;

use super::PushReport;

/// Why a tag or version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// `{name}` is not one of `{git_sha}`, `{date}`, `{version}`.
    #[error(
        "tag template `{template}`: unknown placeholder `{{{name}}}` (known: {{git_sha}}, {{date}}, {{version}})"
    )]
    UnknownPlaceholder { template: String, name: String },
    /// The template uses a placeholder we have no value for.
    #[error("tag template `{template}`: no value for `{{{name}}}` ({hint})")]
    MissingValue {
        template: String,
        name: String,
        hint: String,
    },
    /// A `{` without its `}`.
    #[error("tag template `{template}`: unclosed `{{`")]
    Unclosed { template: String },
    /// The result is not a valid OCI tag.
    #[error("invalid tag `{tag}`: {reason}")]
    InvalidTag { tag: String, reason: String },
    /// A release version that is not `vMAJOR.MINOR.PATCH[-pre]`.
    #[error("release version `{version}` is not semver: {reason}")]
    NotSemver { version: String, reason: String },
}

/// Values available to tag templates.
#[derive(Clone, Debug, Default)]
pub struct TagVars {
    /// Full or short git commit sha (hex); `{git_sha}` uses its first 7 characters.
    pub git_sha: Option<String>,
    /// `SOURCE_DATE_EPOCH`; `{date}` is its UTC day as `YYYYMMDD`.
    pub source_date_epoch: Option<i64>,
    /// `{version}`, e.g. `v1.2.3`.
    pub version: Option<String>,
}

static TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").unwrap());
static SEMVER_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(v?)(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$",
    )
    .unwrap()
});

/// Check `tag` against the OCI distribution tag grammar.
pub fn validate_tag(tag: &str) -> Result<(), TagError> {
    // Also the OCI layout ref.name grammar: the tag becomes part of `name:tag` there.
    if TAG_RE.is_match(tag) && crate::spec::check::ref_component(tag, b"._-") {
        return Ok(());
    }
    let reason = if tag.is_empty() {
        "empty".to_string()
    } else if tag.len() > 128 {
        format!("{} characters, at most 128 allowed", tag.len())
    } else {
        "must be letters and digits joined by single `.`, `_` or `-` (or `--`)".to_string()
    };
    Err(TagError::InvalidTag {
        tag: tag.to_string(),
        reason,
    })
}

fn utc_day(epoch: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch).ok()?;
    Some(format!(
        "{:04}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day()
    ))
}

/// Expand `{git_sha}`, `{date}` and `{version}` in `template`, and validate the resulting tag.
pub fn expand_tag(template: &str, vars: &TagVars) -> Result<String, TagError> {
    let missing = |name: &str, hint: &str| TagError::MissingValue {
        template: template.to_string(),
        name: name.to_string(),
        hint: hint.to_string(),
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| TagError::Unclosed {
            template: template.into(),
        })?;
        let name = &after[..close];
        match name {
            "git_sha" => {
                let sha = vars
                    .git_sha
                    .as_deref()
                    .ok_or_else(|| missing(name, "no git commit known"))?;
                if sha.len() < 7 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(missing(name, &format!("`{sha}` is not a git sha")));
                }
                out.push_str(&sha[..7].to_ascii_lowercase());
            }
            "date" => {
                let epoch = vars
                    .source_date_epoch
                    .ok_or_else(|| missing(name, "SOURCE_DATE_EPOCH not set"))?;
                let day = utc_day(epoch).ok_or_else(|| {
                    missing(name, &format!("SOURCE_DATE_EPOCH {epoch} out of range"))
                })?;
                out.push_str(&day);
            }
            "version" => out.push_str(
                vars.version
                    .as_deref()
                    .ok_or_else(|| missing(name, "no --release version"))?,
            ),
            _ => {
                return Err(TagError::UnknownPlaceholder {
                    template: template.into(),
                    name: name.into(),
                });
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    validate_tag(&out)?;
    Ok(out)
}

/// The CI default tags of §1: `latest`, `sha-<short sha>`, `<YYYYMMDD>`.
pub fn ci_tags(vars: &TagVars) -> Result<Vec<String>, TagError> {
    ["latest", "sha-{git_sha}", "{date}"]
        .iter()
        .map(|t| expand_tag(t, vars))
        .collect()
}

/// Tags for a release: `v1.2.3` → `v1.2.3`, `v1.2`, `latest`; a pre-release gets only itself.
pub fn release_tags(version: &str) -> Result<Vec<String>, TagError> {
    let not = |reason: &str| TagError::NotSemver {
        version: version.into(),
        reason: reason.into(),
    };
    if version.contains('+') {
        return Err(not("build metadata (`+...`) cannot appear in an OCI tag"));
    }
    let caps = SEMVER_RE
        .captures(version)
        .ok_or_else(|| not("expected vMAJOR.MINOR.PATCH or vMAJOR.MINOR.PATCH-PRERELEASE"))?;
    validate_tag(version)?;
    if caps.get(5).is_some() {
        return Ok(vec![version.to_string()]);
    }
    let minor = format!("{}{}.{}", &caps[1], &caps[2], &caps[3]);
    Ok(vec![version.to_string(), minor, "latest".to_string()])
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A GitHub step-summary (`$GITHUB_STEP_SUMMARY`) markdown table of pushed images.
pub fn step_summary(reports: &[PushReport]) -> String {
    let mut md = String::from("### Pushed images\n\n");
    md.push_str(
        "| Image | Tags | Digest | Platforms | Uploaded | Mounted | Present | Bytes uploaded |\n",
    );
    md.push_str("|---|---|---|---|---:|---:|---:|---:|\n");
    for r in reports {
        let tags: Vec<String> = r.tags.iter().map(|t| format!("`{}`", cell(t))).collect();
        let platforms: Vec<&str> = r
            .manifests
            .iter()
            .filter_map(|m| m.platform.as_deref())
            .collect();
        let _ = writeln!(
            md,
            "| `{}` | {} | `{}` | {} | {} | {} | {} | {} |",
            cell(&r.repository),
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(", ")
            },
            r.digest,
            if platforms.is_empty() {
                "-".into()
            } else {
                cell(&platforms.join(", "))
            },
            r.blobs_uploaded,
            r.blobs_mounted,
            r.blobs_present,
            human_bytes(r.bytes_uploaded),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> TagVars {
        TagVars {
            git_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
            // 2024-02-29T23:59:59Z
            source_date_epoch: Some(1_709_251_199),
            version: Some("v1.2.3".into()),
        }
    }

    #[test]
    fn expands_templates() {
        let v = vars();
        assert_eq!(expand_tag("sha-{git_sha}", &v).unwrap(), "sha-0123456");
        assert_eq!(expand_tag("{date}", &v).unwrap(), "20240229");
        assert_eq!(
            expand_tag("{version}-{date}", &v).unwrap(),
            "v1.2.3-20240229"
        );
        assert_eq!(expand_tag("plain", &v).unwrap(), "plain");
        assert_eq!(ci_tags(&v).unwrap(), ["latest", "sha-0123456", "20240229"]);
        let epoch0 = TagVars {
            source_date_epoch: Some(0),
            ..Default::default()
        };
        assert_eq!(expand_tag("{date}", &epoch0).unwrap(), "19700101");
    }

    #[test]
    fn template_errors_are_clear() {
        let v = vars();
        let e = expand_tag("{branch}", &v).unwrap_err();
        assert!(matches!(e, TagError::UnknownPlaceholder { ref name, .. } if name == "branch"));
        assert!(e.to_string().contains("{branch}"), "{e}");
        let e = expand_tag("x-{date}", &TagVars::default()).unwrap_err();
        assert!(e.to_string().contains("SOURCE_DATE_EPOCH"), "{e}");
        assert!(matches!(
            expand_tag("{git_sha", &v),
            Err(TagError::Unclosed { .. })
        ));
        let bad_sha = TagVars {
            git_sha: Some("xyz".into()),
            ..Default::default()
        };
        assert!(expand_tag("{git_sha}", &bad_sha).is_err());
        assert!(matches!(
            expand_tag("a/b", &v),
            Err(TagError::InvalidTag { .. })
        ));
        assert!(matches!(
            expand_tag("-x", &v),
            Err(TagError::InvalidTag { .. })
        ));
        assert!(validate_tag(&"a".repeat(129)).is_err());
        assert!(validate_tag(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn release_tags_follow_semver() {
        assert_eq!(
            release_tags("v1.2.3").unwrap(),
            ["v1.2.3", "v1.2", "latest"]
        );
        assert_eq!(
            release_tags("0.10.0").unwrap(),
            ["0.10.0", "0.10", "latest"]
        );
        assert_eq!(release_tags("v2.0.0-rc.1").unwrap(), ["v2.0.0-rc.1"]);
        for bad in ["v1.2", "1", "v01.2.3", "latest", "v1.2.3.4", "", "vv1.2.3"] {
            let e = release_tags(bad).unwrap_err();
            assert!(matches!(e, TagError::NotSemver { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("not semver"), "{e}");
        }
        assert!(
            release_tags("v1.2.3+build5")
                .unwrap_err()
                .to_string()
                .contains("build metadata")
        );
    }

    #[test]
    fn step_summary_renders_a_table() {
        use crate::digest::Sha256Digest;
        let d = Sha256Digest::of(b"x");
        let report = PushReport {
            source: "hakim-base:latest".into(),
            repository: "ghcr.io/o/hakim-base".into(),
            digest: d,
            media_type: crate::publish::layout::MEDIA_INDEX.into(),
            tags: vec!["latest".into(), "sha-0123456".into()],
            references: vec![format!("ghcr.io/o/hakim-base:latest@{d}")],
            manifests: vec![crate::publish::PushedManifest {
                digest: d,
                media_type: crate::publish::layout::MEDIA_MANIFEST.into(),
                size: 1,
                platform: Some("linux/amd64".into()),
            }],
            blobs_uploaded: 2,
            blobs_mounted: 1,
            blobs_present: 3,
            bytes_uploaded: 3 * 1024 * 1024,
            auth: crate::publish::CredentialOrigin::Anonymous,
            duration_ms: 5,
        };
        let md = step_summary(&[report]);
        let row = md.lines().find(|l| l.contains("hakim-base")).unwrap();
        assert_eq!(
            row,
            format!(
                "| `ghcr.io/o/hakim-base` | `latest`, `sha-0123456` | `{d}` | linux/amd64 | 2 | 1 | 3 | 3.0 MiB |"
            )
        );
        assert!(md.starts_with("### Pushed images\n\n| Image |"));
    }
}
