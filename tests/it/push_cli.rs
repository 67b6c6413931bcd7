//! `hakim push` as a user runs it: build if needed, push every variant, report digests.

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::registry::TestRegistry;
use crate::support::*;

#[test]
fn push_builds_pushes_all_variants_and_reports_digests() {
    let reg = TestRegistry::open();
    let s = Scratch::fixture("basic");
    let summary = s.dir.path().join("summary.md");
    let out = run_ok(
        s.hakim()
            .args([
                "push",
                "--json",
                "--registry",
                &format!("{}/team", reg.host()),
                "--tag",
                "{date}",
                "--tag",
                "extra",
            ])
            .env("SOURCE_DATE_EPOCH", "1764460800")
            .env("GITHUB_STEP_SUMMARY", &summary),
    );
    let reports = json(&out);
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    for r in reports {
        let repo = r["repository"].as_str().unwrap();
        let digest = r["digest"].as_str().unwrap();
        let tags: Vec<&str> = r["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        for t in ["latest", "1.0", "20251130", "extra"] {
            assert!(tags.contains(&t), "{repo}: {tags:?}");
            let (_, remote) = crate::support::skopeo::raw(&format!("{repo}:{t}"), None);
            assert_eq!(remote.oci(), digest, "{repo}:{t}");
        }
        // The pushed digest is what the local layout holds.
        let name = repo.rsplit('/').next().unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(s.layout().join("index.json")).unwrap()).unwrap();
        let local = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"] == format!("{name}:latest")
            })
            .unwrap();
        assert_eq!(local["digest"], digest);
        assert!(
            r["references"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x.as_str().unwrap().ends_with(digest))
        );
    }
    let md = fs::read_to_string(&summary).unwrap();
    assert!(
        md.contains("test-base") && md.contains("test-app") && md.contains("sha256:"),
        "{md}"
    );

    // Pushing again uploads nothing.
    let again = json(&run_ok(
        s.hakim()
            .args([
                "push",
                "--json",
                "--registry",
                &format!("{}/team", reg.host()),
            ])
            .env("SOURCE_DATE_EPOCH", "1764460800"),
    ));
    for r in again.as_array().unwrap() {
        assert_eq!(r["blobs_uploaded"], 0, "{r}");
    }
}

#[test]
fn release_tags_need_a_clean_git_tree_and_credentials_never_leak() {
    let reg = TestRegistry::with_basic_auth("ci", "s3cr3t-pa55");
    let s = Scratch::fixture("basic");
    let git = |args: &[&str]| run_ok(Command::new("git").arg("-C").arg(s.project()).args(args));
    git(&["init", "-q"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.invalid",
        "add",
        ".",
    ]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.invalid",
        "commit",
        "-qm",
        "fixture",
    ]);
    s.write("dirty.txt", "x");
    let push = |password: &str| {
        let mut child = s
            .hakim()
            .args([
                "push",
                "base",
                "--registry",
                &format!("{}/rel", reg.host()),
                "--release",
                "v1.2.3",
                "--username",
                "ci",
                "--password-stdin",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = push("s3cr3t-pa55");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uncommitted changes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(s.project().join("dirty.txt")).unwrap();
    // out/ lives outside the project, so the tree is clean now.
    let out = push("wrong-password-xyz");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&reg.host()) && !err.contains("wrong-password-xyz"),
        "{err}"
    );
    let out = push("s3cr3t-pa55");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("s3cr3t-pa55"));
    for t in ["v1.2.3", "v1.2", "latest", "1.0"] {
        let (_, d) = crate::support::skopeo::raw(
            &format!("{}/rel/test-base:{t}", reg.host()),
            Some("ci:s3cr3t-pa55"),
        );
        assert!(all.contains(&d.oci()), "{t} digest not reported: {all}");
    }
}
