//! Value checks for fields that end up in account databases, image configs and manifests.
//!
//! Each check returns `(field suffix, message)` so the caller can name file:line:col.

use super::types::{AccountsSpec, ImageConfigSpec};

pub use crate::git::ref_component;

/// Longest free-text value (descriptions, labels, annotations, comments) accepted, in bytes.
/// Registries refuse manifests over 4 MiB; a few of these must never get near that.
pub const MAX_TEXT: usize = 64 * 1024;

/// Longest user or group name `useradd` accepts.
pub const MAX_ACCOUNT_NAME: usize = 32;

/// A failed check: the field (relative to what was checked) and why.
pub type Failure = (String, String);

/// Whether `n` matches useradd's default NAME_REGEX `^[a-z_][a-z0-9_-]*[$]?$` (at most 32).
pub fn account_name(n: &str) -> bool {
    let body = n.strip_suffix('$').unwrap_or(n);
    let b = body.as_bytes();
    !b.is_empty()
        && n.len() <= MAX_ACCOUNT_NAME
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// A field written into a `:`-separated database line: no `:`, newline, CR or NUL.
pub fn db_field(field: &str, v: &str) -> Result<(), Failure> {
    match v.chars().find(|c| matches!(c, ':' | '\n' | '\r' | '\0')) {
        Some(c) => Err((
            field.into(),
            format!("{v:?} contains {c:?}, which would break /etc/passwd and /etc/group"),
        )),
        None => Ok(()),
    }
}

fn absolute_db_path(field: &str, v: &str) -> Result<(), Failure> {
    db_field(field, v)?;
    super::check_image_path(v).map_err(|m| (field.into(), m))
}

/// Check users and groups the way `useradd`/`groupadd` would.
pub fn accounts(acc: &AccountsSpec) -> Result<(), Failure> {
    let mut seen = std::collections::BTreeSet::new();
    let name_msg = |what: &str, n: &str| {
        format!(
            "{what} name {n:?} is invalid: it must match ^[a-z_][a-z0-9_-]*[$]?$ and be at most {MAX_ACCOUNT_NAME} bytes"
        )
    };
    for (i, g) in acc.groups.iter().enumerate() {
        let field = format!("groups[{i}].name");
        if !account_name(&g.name) {
            return Err((field, name_msg("group", &g.name)));
        }
        if !seen.insert(("g", g.name.as_str())) {
            return Err((field, format!("group `{}` is listed twice", g.name)));
        }
    }
    for (i, u) in acc.users.iter().enumerate() {
        let at = |f: &str| format!("users[{i}].{f}");
        if !account_name(&u.name) {
            return Err((at("name"), name_msg("user", &u.name)));
        }
        if !seen.insert(("u", u.name.as_str())) {
            return Err((at("name"), format!("user `{}` is listed twice", u.name)));
        }
        if let Some(h) = &u.home {
            absolute_db_path(&at("home"), h)?;
        }
        if let Some(s) = &u.shell {
            absolute_db_path(&at("shell"), s)?;
        }
        if let Some(c) = &u.comment {
            db_field(&at("comment"), c)?;
            text(&at("comment"), c)?;
        }
        // Without `gid`, the user gets a group of its own name with gid = uid.
        if u.gid.is_none()
            && let Some(g) = acc
                .groups
                .iter()
                .find(|g| g.name == u.name && g.gid != u.uid)
        {
            return Err((
                at("gid"),
                format!(
                    "group `{}` is declared with gid {}, but the user's own group would get gid {}; set gid: {}",
                    g.name, g.gid, u.uid, g.gid
                ),
            ));
        }
        for (j, g) in u.groups.iter().enumerate() {
            if !account_name(g) {
                return Err((format!("users[{i}].groups[{j}]"), name_msg("group", g)));
            }
        }
    }
    Ok(())
}

/// Signal names a runtime maps to a number (`SIGTERM`, `SIGRTMIN+3`) or a plain number.
pub fn signal(s: &str) -> bool {
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS", "RTMIN",
        "RTMAX",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let Some(name) = s.strip_prefix("SIG") else {
        return false;
    };
    let rt = |base: &str, sign: char| {
        name.strip_prefix(base)
            .and_then(|r| r.strip_prefix(sign))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (1..=30).contains(&n))
    };
    NAMES.contains(&name) || rt("RTMIN", '+') || rt("RTMAX", '-')
}

/// A free-text value: bounded, no NUL.
pub fn text(field: &str, v: &str) -> Result<(), Failure> {
    if v.len() > MAX_TEXT {
        return Err((
            field.into(),
            format!(
                "is {} bytes; at most {MAX_TEXT} are allowed (manifests over 4 MiB are refused by registries)",
                v.len()
            ),
        ));
    }
    if v.contains('\0') {
        return Err((field.into(), "must not contain NUL".into()));
    }
    Ok(())
}

/// Check an image `config:` block as written in one file.
pub fn config(c: &ImageConfigSpec) -> Result<(), Failure> {
    for (k, v) in &c.env {
        let field = format!("config.env.{k}");
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err((
                field,
                format!("env key {k:?} must be non-empty and contain no `=` or NUL"),
            ));
        }
        text(&field, v)?;
    }
    if let Some(s) = &c.stop_signal
        && !signal(s)
    {
        return Err((
            "config.stop_signal".into(),
            format!("`{s}` is not a signal name (e.g. SIGTERM, SIGRTMIN+3) or number 1-64"),
        ));
    }
    if let Some(w) = &c.workdir {
        super::check_image_path(w).map_err(|m| ("config.workdir".to_string(), m))?;
    }
    for (i, v) in c.volumes.iter().enumerate() {
        super::check_image_path(v).map_err(|m| (format!("config.volumes[{i}]"), m))?;
    }
    for (k, v) in &c.labels {
        text(&format!("config.labels.{k}"), v)?;
    }
    for (k, v) in &c.annotations {
        text(&format!("config.annotations.{k}"), v)?;
    }
    Ok(())
}

/// Latest SOURCE_DATE_EPOCH whose date has four year digits (9999-12-31T23:59:59Z),
/// which is what `{date}` tags and the RFC 3339 `created` field can express.
pub const MAX_EPOCH: u64 = 253_402_300_799;

/// Parse SOURCE_DATE_EPOCH: whole seconds from 0 to [`MAX_EPOCH`].
pub fn source_date_epoch(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("SOURCE_DATE_EPOCH=`{s}` is not a number of seconds"))?;
    if n > MAX_EPOCH {
        return Err(format!(
            "SOURCE_DATE_EPOCH={n} is after 9999-12-31T23:59:59Z ({MAX_EPOCH}), which dates cannot express"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_useradd() {
        for ok in ["coder", "_x", "a-b_1", "machine$", &"a".repeat(32)] {
            assert!(account_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".",
            "-x",
            "1a",
            "A",
            "a:b",
            "a\nb",
            "$",
            &"a".repeat(33),
        ] {
            assert!(!account_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn ref_names_follow_the_oci_grammar() {
        for ok in ["latest", "1.0", "sha-abc1234", "a--b", "v1_2", "20240101"] {
            assert!(ref_component(ok, b"._-"), "{ok}");
        }
        for bad in [
            "1._-.q", "_x", "x.", "a..b", "a---b", "", "-a", "a__b", "a:b",
        ] {
            assert!(!ref_component(bad, b"._-"), "{bad}");
        }
    }

    #[test]
    fn signals() {
        for ok in ["SIGTERM", "SIGRTMIN+3", "SIGRTMAX-1", "9", "SIGPWR"] {
            assert!(signal(ok), "{ok}");
        }
        for bad in ["TERM", "SIGFOO", "0", "65", "SIGRTMIN+0", "sigterm", ""] {
            assert!(!signal(bad), "{bad}");
        }
    }

    #[test]
    fn epoch_range() {
        assert_eq!(source_date_epoch("0"), Ok(0));
        assert_eq!(source_date_epoch(&MAX_EPOCH.to_string()), Ok(MAX_EPOCH));
        let e = source_date_epoch("99999999999999").unwrap_err();
        assert!(e.contains("9999-12-31"), "{e}");
        assert!(source_date_epoch("-1").is_err());
    }
}
