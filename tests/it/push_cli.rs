//! `hakim push` as a user runs it: build if needed, push every variant, report digests.

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::proxy::{Logged, Proxy};
use crate::support::registry::TestRegistry;
use crate::support::*;

/// Layer digests of `name:latest`'s manifests in the local layout.
fn layer_digests(s: &Scratch, name: &str) -> std::collections::BTreeSet<String> {
    let blob = |d: &str| -> serde_json::Value {
        let path = s
            .layout()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    };
    let raw = skopeo_inspect(&s.layout(), &format!("{name}:latest"), &["--raw"]);
    let manifests: Vec<serde_json::Value> = match raw["manifests"].as_array() {
        Some(list) => list
            .iter()
            .map(|m| blob(m["digest"].as_str().unwrap()))
            .collect(),
        None => vec![raw],
    };
    manifests
        .iter()
        .flat_map(|m| m["layers"].as_array().unwrap().clone())
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Completed uploads (final PUT of a session) of `digest`, counted at the proxy.
fn uploads_of(log: &[Logged], digest: &str) -> usize {
    log.iter()
        .filter(|r| r.is_blob_upload() && r.query.contains(digest))
        .count()
}

#[test]
fn push_builds_pushes_all_variants_and_reports_digests() {
    let reg = TestRegistry::open();
    // Everything reaches the registry through a logging proxy: the evidence is what it saw.
    let proxy = Proxy::new(reg.addr);
    let s = Scratch::fixture("basic");
    // Same compression as the base, so the app really shares the base's layer blobs.
    s.write(
        "variants/app.yaml",
        &s.read("variants/app.yaml")
            .replace("compression: zstd\n", ""),
    );
    let summary = s.dir.path().join("summary.md");
    let out = run_ok(
        s.hakim()
            .args([
                "push",
                "--json",
                "--registry",
                &format!("{}/team", proxy.host()),
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
    // Shared layers are uploaded once and mounted into the other repository, never re-sent.
    // Images are pushed in parallel, so either one may be the one that uploads.
    let shared: Vec<String> = layer_digests(&s, "test-base")
        .intersection(&layer_digests(&s, "test-app"))
        .cloned()
        .collect();
    assert!(shared.len() >= 2, "the app shares no layers with the base");
    let log = proxy.log();
    for d in &shared {
        assert_eq!(
            uploads_of(&log, d),
            1,
            "{d} uploaded {} times",
            uploads_of(&log, d)
        );
        let mounts: Vec<&str> = log
            .iter()
            .filter(|r| r.is_mount() && r.status == 201 && r.query.contains(d.as_str()))
            .map(|r| r.path.as_str())
            .collect();
        assert!(
            mounts == ["/v2/team/test-app/blobs/uploads/"]
                || mounts == ["/v2/team/test-base/blobs/uploads/"],
            "{d} was not mounted once into the other repository: {mounts:?} {log:#?}"
        );
    }
    let md = fs::read_to_string(&summary).unwrap();
    assert!(
        md.contains("test-base") && md.contains("test-app") && md.contains("sha256:"),
        "{md}"
    );

    // Pushing again uploads nothing: no upload session is even opened.
    proxy.clear();
    let again = json(&run_ok(
        s.hakim()
            .args([
                "push",
                "--json",
                "--registry",
                &format!("{}/team", proxy.host()),
            ])
            .env("SOURCE_DATE_EPOCH", "1764460800"),
    ));
    assert_eq!(again.as_array().unwrap().len(), 2);
    let log = proxy.log();
    let writes: Vec<&Logged> = log
        .iter()
        .filter(|r| r.path.contains("/blobs/") && r.method != "HEAD" && r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "blobs sent again: {writes:#?}");
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
