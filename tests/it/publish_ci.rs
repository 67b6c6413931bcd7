//! What CI publishing needs from `hakim push`: shared layers uploaded once per namespace even
//! across separate invocations (cross-repo mounts, remembered blob locations), per-registry
//! chunking, and per-arch jobs merged into one index. Real docker-registry, counted at a proxy.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::support::layout::{Layout, noise, tar_layer};
use crate::support::proxy::{Logged, Proxy};
use crate::support::registry::TestRegistry;
use crate::support::*;
use hakim::publish::{NetOptions, Publisher, PushOptions, RetryPolicy};

fn opts(locations: Option<&Path>) -> PushOptions {
    PushOptions {
        net: NetOptions {
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_millis(200),
                max_retry_after: Duration::from_secs(1),
            },
            ..NetOptions::default()
        },
        locations_dir: locations.map(Path::to_path_buf),
        ..PushOptions::default()
    }
}

/// Digest of every completed blob upload (the final PUT carries `digest=`).
fn uploaded_digests(log: &[Logged]) -> Vec<String> {
    log.iter()
        .filter(|l| l.is_blob_upload())
        .map(|l| {
            l.query
                .split('&')
                .find_map(|kv| kv.strip_prefix("digest="))
                .expect("final upload PUT names its digest")
                .replace("%3A", ":")
        })
        .collect()
}

fn assert_no_blob_uploaded_twice(log: &[Logged]) {
    let mut seen = BTreeMap::new();
    for d in uploaded_digests(log) {
        *seen.entry(d).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "uploaded more than once: {twice:?}");
}

/// The basic fixture with both variants compressed alike, so their shared layers are one blob.
fn shared_fixture() -> Scratch {
    let s = Scratch::fixture("basic");
    let app = s
        .read("variants/app.yaml")
        .replace("compression: zstd\n", "");
    s.write("variants/app.yaml", &app);
    s
}

#[test]
fn second_invocation_mounts_shared_layers_instead_of_uploading() {
    let reg = TestRegistry::open();
    let proxy = Proxy::new(reg.addr);
    let s = shared_fixture();
    let registry = format!("{}/team", proxy.host());
    let push = |variant: &str| {
        json(&run_ok(s.hakim().args([
            "push",
            variant,
            "--json",
            "--registry",
            &registry,
        ])))[0]
            .clone()
    };
    let base = push("base");
    assert_eq!(base["blobs_mounted"], 0, "{base}");
    let uploads_after_base = uploaded_digests(&proxy.log()).len();
    assert!(
        uploads_after_base >= 3,
        "base uploads: {uploads_after_base}"
    );

    let app = push("app");
    let log = proxy.log();
    assert_no_blob_uploaded_twice(&log);
    // The base's layers (files, users) are in app too: both mounted from test-base.
    let built = json(&run_ok(s.hakim().args(["build", "base", "--json"])));
    let base_layers: Vec<&str> = built["variants"][0]["archs"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(base_layers.len(), 2, "{built}");
    let mounts = app["mounts"].as_array().unwrap();
    for d in &base_layers {
        assert!(
            mounts
                .iter()
                .any(|m| m["digest"] == *d && m["from"] == "team/test-base"),
            "layer {d} not reported as mounted from team/test-base: {app}"
        );
    }
    assert_eq!(app["blobs_mounted"], mounts.len());
    assert!(log.iter().filter(|l| l.is_mount()).count() >= base_layers.len());

    // And the pushed image is whole: skopeo reads every arch back.
    let direct = format!("{}/team/test-app:latest", reg.host());
    let (raw, digest) = crate::support::skopeo::raw(&direct, None);
    assert_eq!(digest.oci(), app["digest"].as_str().unwrap());
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    for arch in ["amd64", "arm64"] {
        let info = crate::support::skopeo::inspect(&direct, arch);
        assert_eq!(info["Architecture"], arch, "{info}");
    }
}

fn image_with(dir: &Path, top: &[u8]) -> Layout {
    let mut l = Layout::new(dir);
    let layers = vec![
        tar_layer(&[("usr/bin/shared", &noise(256 * 1024, 3))]),
        tar_layer(&[("opt/top", top)]),
    ];
    let m = l.image("amd64", &layers);
    l.tag("x:latest", &m);
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_locations_mount_across_publishers_and_a_refused_mount_uploads() {
    let reg = TestRegistry::open();
    let proxy = Proxy::new(reg.addr);
    let tmp = tempfile::tempdir().unwrap();
    let memory = tmp.path().join("locations");
    let a = image_with(&tmp.path().join("a"), b"a");
    let b = image_with(&tmp.path().join("b"), b"b");
    let host = proxy.host();

    // Invocation 1 pushes to ns/a; invocation 2, a fresh process with no hints, to ns/b.
    Publisher::new(opts(Some(&memory)))
        .push(&a.dir, "x:latest", &format!("{host}/ns/a"), &[])
        .await
        .unwrap();
    let second = Publisher::new(opts(Some(&memory)))
        .push(&b.dir, "x:latest", &format!("{host}/ns/b"), &[])
        .await
        .unwrap();
    assert_eq!(second.blobs_mounted, 1, "{second:?}");
    assert_eq!(second.mounts[0].from, "ns/a");
    assert_no_blob_uploaded_twice(&proxy.log());

    // The memory now says ns/a and ns/b hold the shared blob; a stale claim that ns/gone
    // holds it is refused (202), costs an upload, and is forgotten.
    let shared = second.mounts[0].digest;
    let mem = hakim::publish::BlobLocations::new(&memory);
    let hosts = mem.get(&host, &shared);
    assert!(hosts.contains(&"ns/a".to_string()) && hosts.contains(&"ns/b".to_string()));
    let c = image_with(&tmp.path().join("c"), b"c");
    let fresh = tempfile::tempdir().unwrap();
    let fresh_mem = hakim::publish::BlobLocations::new(fresh.path());
    fresh_mem.record(&host, &shared, "ns/gone").unwrap();
    proxy.clear();
    let third = Publisher::new(opts(Some(fresh.path())))
        .push(&c.dir, "x:latest", &format!("{host}/ns/c"), &[])
        .await
        .unwrap();
    assert_eq!(third.blobs_mounted, 0, "{third:?}");
    let log = proxy.log();
    let refused = log
        .iter()
        .filter(|l| l.method == "POST" && l.status == 202)
        .filter(|l| l.query.contains("from=ns/gone") || l.query.contains("from=ns%2Fgone"))
        .count();
    assert_eq!(refused, 1, "one refused mount attempt: {log:?}");
    assert!(uploaded_digests(&log).contains(&shared.oci()));
    assert_eq!(fresh_mem.get(&host, &shared), vec!["ns/c".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_size_follows_the_registry_monolithic_off_ghcr() {
    assert_eq!(
        hakim::publish::default_chunk_size("ghcr.io"),
        Some(4 * 1024 * 1024)
    );
    assert_eq!(hakim::publish::default_chunk_size("127.0.0.1:5000"), None);
    let reg = TestRegistry::open();
    let proxy = Proxy::new(reg.addr);
    let tmp = tempfile::tempdir().unwrap();
    let big = noise(9 * 1024 * 1024, 5);
    let l = image_with(&tmp.path().join("l"), &big);
    let report = Publisher::new(opts(None))
        .push(&l.dir, "x:latest", &format!("{}/ns/big", proxy.host()), &[])
        .await
        .unwrap();
    let log = proxy.log();
    assert!(
        !log.iter().any(|r| r.method == "PATCH"),
        "no chunks to a non-GHCR registry"
    );
    let biggest = log
        .iter()
        .filter(|r| r.is_blob_upload())
        .map(|r| r.body_len)
        .max()
        .unwrap();
    assert!(
        biggest > 9 * 1024 * 1024,
        "the 9 MiB layer went in one PUT, biggest body {biggest}"
    );
    let (_, remote) = crate::support::skopeo::raw(&format!("{}/ns/big:latest", reg.host()), None);
    assert_eq!(remote, report.digest);
}

#[test]
fn arch_jobs_merge_into_the_index_a_local_build_makes_only_when_all_landed() {
    let reg = TestRegistry::open();
    let s = Scratch::fixture("basic");
    let registry = format!("{}/team", reg.host());
    let arch_push = |arch: &str| {
        json(&run_ok(s.hakim().args([
            "push",
            "app",
            "--json",
            "--arch",
            arch,
            "--registry",
            &registry,
            "--tag",
            "ci1",
        ])))[0]
            .clone()
    };
    let merge = || {
        s.hakim()
            .args([
                "push",
                "app",
                "--json",
                "--merge",
                "--registry",
                &registry,
                "--tag",
                "ci1",
                "--tag",
                "stable",
            ])
            .output()
            .unwrap()
    };
    let amd = arch_push("amd64");
    assert_eq!(
        amd["tags"],
        serde_json::json!(["latest-amd64", "1.0-amd64", "ci1-amd64"]),
        "{amd}"
    );
    assert_eq!(
        amd["media_type"], "application/vnd.oci.image.manifest.v1+json",
        "an arch job pushes a bare manifest"
    );

    // arm64 has not landed: the merge fails naming it and moves no tag.
    let early = merge();
    let err = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success(), "merge must wait for every arch");
    assert!(
        err.contains("ci1-arm64") && err.contains("nothing was pushed"),
        "{err}"
    );
    let missing = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{registry}/test-app:stable"))
        .output()
        .unwrap();
    assert!(!missing.status.success(), "no tag before every arch landed");

    let arm = arch_push("arm64");
    let out = merge();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone();

    // The merged index is byte for byte what a local multi-arch build writes.
    let local = json(&run_ok(s.hakim().args(["build", "app", "--json"])));
    let local = &local["variants"][0];
    assert_eq!(merged["digest"], local["digest"], "{merged}\n{local}");
    for t in ["latest", "ci1", "stable"] {
        let (raw, d) = crate::support::skopeo::raw(&format!("{registry}/test-app:{t}"), None);
        assert_eq!(d.oci(), merged["digest"].as_str().unwrap(), "{t}");
        let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let children: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(
            children,
            vec![
                amd["digest"].as_str().unwrap(),
                arm["digest"].as_str().unwrap()
            ]
        );
    }
    let info = crate::support::skopeo::inspect(&format!("{registry}/test-app:stable"), "arm64");
    assert_eq!(info["Architecture"], "arm64", "{info}");

    // An arch tag that holds the wrong platform is refused before anything moves.
    run_ok(std::process::Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{registry}/test-app:ci1-amd64"),
        &format!("docker://{registry}/test-app:bad-arm64"),
    ]));
    arch_push_tag(&s, &registry, "amd64", "bad");
    let out = s
        .hakim()
        .args([
            "push",
            "app",
            "--merge",
            "--registry",
            &registry,
            "--tag",
            "bad",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("expected linux/arm64/v8"),
        "{err}"
    );
    let (_, still) = crate::support::skopeo::raw(&format!("{registry}/test-app:latest"), None);
    assert_eq!(still.oci(), merged["digest"].as_str().unwrap());
}

fn arch_push_tag(s: &Scratch, registry: &str, arch: &str, tag: &str) {
    run_ok(s.hakim().args([
        "push",
        "app",
        "--arch",
        arch,
        "--registry",
        registry,
        "--tag",
        tag,
    ]));
}
