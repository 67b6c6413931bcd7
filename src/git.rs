//! Git facts and tag templates: what `{git_sha}`, `{date}` and `{version}` expand to, and
//! which tags are valid. Low in the graph: spec validates templates with it, build expands
//! them, run/test match built refs against them, push adds release tags.

use std::path::Path;
use std::process::Command;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// Git facts recorded in annotations and tag templates.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GitInfo {
    /// Full commit id.
    pub revision: Option<String>,
    /// `remote.origin.url`, made browsable where it is an SSH form.
    pub source: Option<String>,
}

fn git(dir: &Path, args: &[&str]) -> Option<std::process::Output> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()
}

impl GitInfo {
    /// Ask git about the project directory; absent facts stay `None`.
    pub fn discover(dir: &Path) -> Self {
        let value = |args: &[&str]| -> Option<String> {
            let out = git(dir, args)?;
            let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (out.status.success() && !s.is_empty()).then_some(s)
        };
        let source = value(&["config", "--get", "remote.origin.url"]).map(|u| {
            match u.strip_prefix("git@").and_then(|r| r.split_once(':')) {
                Some((host, path)) => format!("https://{host}/{}", path.trim_end_matches(".git")),
                None => u.trim_end_matches(".git").to_string(),
            }
        });
        Self {
            revision: value(&["rev-parse", "HEAD"]),
            source,
        }
    }

    /// Whether the checkout at `dir` has no uncommitted changes; `None` when git cannot say.
    pub fn is_clean(dir: &Path) -> Option<bool> {
        let out = git(dir, &["status", "--porcelain"])?;
        out.status.success().then_some(out.stdout.is_empty())
    }
}

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

impl TagVars {
    /// The values for a build of this commit at `epoch`, with `version` when given.
    pub fn new(git: &GitInfo, epoch: u64, version: Option<&str>) -> Self {
        Self {
            git_sha: git.revision.clone(),
            source_date_epoch: Some(epoch as i64),
            version: version.map(String::from),
        }
    }
}

/// Template placeholders a tag may use.
pub const PLACEHOLDERS: &[&str] = &["git_sha", "date", "version"];

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
    if TAG_RE.is_match(tag) && ref_component(tag, b"._-") {
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

/// Check a tag template without values: known placeholders, and a valid tag whatever they
/// expand to.
pub fn check_template(template: &str) -> Result<(), TagError> {
    let sample = TagVars {
        git_sha: Some("0000000".into()),
        source_date_epoch: Some(0),
        version: Some("0".into()),
    };
    expand_tag(template, &sample).map(drop)
}

/// Whether `tag` is what `template` could have expanded to (a literal must match exactly;
/// `{git_sha}` is 7 hex digits, `{date}` 8 digits, `{version}` any tag characters).
pub fn template_matches(template: &str, tag: &str) -> bool {
    let mut pattern = String::from("^");
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        pattern.push_str(&regex::escape(&rest[..open]));
        let Some(close) = rest[open..].find('}') else {
            return false;
        };
        pattern.push_str(match &rest[open + 1..open + close] {
            "git_sha" => "[0-9a-f]{7}",
            "date" => "[0-9]{8}",
            "version" => "[A-Za-z0-9_.-]+",
            _ => return false,
        });
        rest = &rest[open + close + 1..];
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    Regex::new(&pattern).is_ok_and(|re| re.is_match(tag))
}

/// Whether `s` fits the OCI image-spec `ref.name` component grammar with separators
/// from `seps`: alphanumeric runs joined by one separator or `--`. A layout ref that breaks
/// it (e.g. tag `1._-.q`) is refused by umoci.
pub fn ref_component(s: &str, seps: &[u8]) -> bool {
    let b = s.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return false;
    }
    let mut run = 0;
    for (i, c) in b.iter().enumerate() {
        if c.is_ascii_alphanumeric() {
            run = 0;
            continue;
        }
        if !seps.contains(c) {
            return false;
        }
        run += 1;
        let double_dash = run == 2 && *c == b'-' && b[i - 1] == b'-';
        if run > 1 && !double_dash {
            return false;
        }
    }
    true
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
    fn templates_are_checked_without_values_and_matched_against_built_tags() {
        assert!(check_template("sha-{git_sha}").is_ok());
        assert!(check_template("{version}").is_ok());
        assert!(matches!(
            check_template("{branch}"),
            Err(TagError::UnknownPlaceholder { .. })
        ));
        assert!(check_template("-{date}").is_err());
        assert!(template_matches("{version}", "v1.2.3"));
        assert!(template_matches("sha-{git_sha}", "sha-0123abc"));
        assert!(template_matches("latest", "latest"));
        assert!(!template_matches("latest", "latest2"));
        assert!(!template_matches("sha-{git_sha}", "sha-xyz"));
        assert!(!template_matches("{date}", "2024-01-01"));
        assert!(!template_matches("a.{version}", "abv1"));
        let v = vars();
        for t in ["latest", "sha-{git_sha}", "{date}", "{version}-x"] {
            assert!(template_matches(t, &expand_tag(t, &v).unwrap()), "{t}");
        }
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
}
