//! The GitHub step summary of a push; tag templates live in [`crate::git`].

use std::fmt::Write as _;

use super::PushReport;

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

    #[test]
    fn step_summary_renders_a_table() {
        use crate::digest::Sha256Digest;
        let d = Sha256Digest::of(b"x");
        let report = PushReport {
            source: "hakim-base:latest".into(),
            repository: "ghcr.io/o/hakim-base".into(),
            digest: d,
            media_type: crate::media::INDEX.into(),
            tags: vec!["latest".into(), "sha-0123456".into()],
            references: vec![format!("ghcr.io/o/hakim-base:latest@{d}")],
            manifests: vec![crate::publish::PushedManifest {
                digest: d,
                media_type: crate::media::MANIFEST.into(),
                size: 1,
                platform: Some("linux/amd64".into()),
            }],
            blobs_uploaded: 2,
            blobs_mounted: 1,
            mounts: Vec::new(),
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
