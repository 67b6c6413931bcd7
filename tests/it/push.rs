//! `hakim push` library tests against a real docker-registry, read back with real skopeo.

use std::path::Path;
use std::time::Duration;

use crate::support::layout::{Desc, Layout, noise, tar_layer};
use crate::support::proxy::{BearerMock, Fault, Logged, Proxy};
use crate::support::registry::TestRegistry;
use crate::support::skopeo;
use hakim::digest::Sha256Digest;
use hakim::net::{RetryEvent, RetryObserver};
use hakim::publish::{
    CredentialContext, CredentialOrigin, Credentials, NetOptions, PublishError, Publisher,
    PushOptions, PushReport, RetryLog, RetryPolicy, push,
};

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        max_retry_after: Duration::from_secs(2),
    }
}

fn opts() -> PushOptions {
    PushOptions {
        net: NetOptions {
            retry: fast_retry(),
            ..NetOptions::default()
        },
        // GHCR-sized chunks, so the chunked path is exercised against the local registry.
        chunk_size: Some(hakim::publish::GHCR_MAX_CHUNK_SIZE),
        ..PushOptions::default()
    }
}

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

fn uploads(log: &[Logged]) -> usize {
    log.iter().filter(|l| l.is_blob_upload()).count()
}

fn mounts(log: &[Logged]) -> usize {
    log.iter().filter(|l| l.is_mount()).count()
}

/// Base layers shared by every test image, and a variant-specific top layer.
fn base_layers() -> Vec<Vec<u8>> {
    vec![
        tar_layer(&[("etc/os-release", b"ID=debian\n")]),
        tar_layer(&[("usr/bin/tool", &noise(64 * 1024, 1))]),
    ]
}

fn single_arch(dir: &Path, top: &[u8]) -> (Layout, Desc) {
    let mut l = Layout::new(dir);
    let mut layers = base_layers();
    layers.push(tar_layer(&[("opt/top", top)]));
    let m = l.image("amd64", &layers);
    l.tag("hakim-x:latest", &m);
    (l, m)
}

fn assert_remote_digest(reference: &str, expected: &Sha256Digest) {
    let (_, got) = skopeo::raw(reference, None);
    assert_eq!(&got, expected, "{reference}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_arch_push_is_read_back_by_skopeo_with_chunked_upload() {
    let reg = TestRegistry::open();
    let proxy = Proxy::new(reg.addr);
    let tmp = tempfile::tempdir().unwrap();
    // A 9 MiB layer forces a chunked upload (3 PATCHes of at most 4 MiB).
    let mut l = Layout::new(&tmp.path().join("layout"));
    let mut layers = base_layers();
    layers.push(tar_layer(&[("opt/big", &noise(9 * 1024 * 1024, 7))]));
    let m = l.image("amd64", &layers);
    l.tag("hakim-x:latest", &m);

    let target = format!("{}/ns/hakim-x", proxy.host());
    let report = push(
        &l.dir,
        "hakim-x:latest",
        &target,
        &tags(&["latest", "sha-0123456"]),
        &opts(),
    )
    .await
    .unwrap();
    assert_eq!(report.digest, m.digest);
    assert_eq!(report.blobs_uploaded, 4, "{report:?}"); // 3 layers + config
    assert_eq!(report.blobs_present + report.blobs_mounted, 0);
    assert!(report.bytes_uploaded > 9 * 1024 * 1024);
    assert_eq!(
        report.references,
        vec![
            format!("{target}:latest@{}", m.digest),
            format!("{target}:sha-0123456@{}", m.digest)
        ]
    );

    let log = proxy.log();
    let patches: Vec<&Logged> = log.iter().filter(|r| r.method == "PATCH").collect();
    assert!(
        patches.len() >= 3,
        "expected a chunked upload, saw {} PATCHes",
        patches.len()
    );
    assert!(
        patches
            .iter()
            .all(|p| p.body_len <= 4 * 1024 * 1024 && p.status == 202)
    );
    assert_eq!(uploads(&log), 4);

    let direct = format!("{}/ns/hakim-x", reg.host());
    for tag in ["latest", "sha-0123456"] {
        assert_remote_digest(&format!("{direct}:{tag}"), &m.digest);
    }
    let info = skopeo::inspect(&format!("{direct}:latest"), "amd64");
    assert_eq!(info["Layers"].as_array().unwrap().len(), 3);
    let copied = skopeo::copy_to_oci(&format!("{direct}:latest"), &tmp.path().join("copy"));
    assert_eq!(copied, m.digest);

    // JSON for --json carries the references and counters.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["digest"], m.digest.oci());
    assert_eq!(json["blobs_uploaded"], 4);
    assert_eq!(json["auth"], "anonymous");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_goes_children_first_then_tags() {
    let reg = TestRegistry::open();
    let proxy = Proxy::new(reg.addr);
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&tmp.path().join("layout"));
    let amd = l.image("amd64", &[tar_layer(&[("bin/a", b"amd64 binary")])]);
    let arm = l.image("arm64", &[tar_layer(&[("bin/a", b"arm64 binary")])]);
    let idx = l.index(&[("amd64", amd.clone()), ("arm64", arm.clone())]);
    l.tag("hakim-multi:latest", &idx);

    let target = format!("{}/ns/multi", proxy.host());
    let report = push(
        &l.dir,
        "hakim-multi:latest",
        &target,
        &tags(&["latest", "20260101"]),
        &opts(),
    )
    .await
    .unwrap();
    assert_eq!(report.digest, idx.digest);
    assert_eq!(report.media_type, crate::support::layout::INDEX);
    let pushed: Vec<Sha256Digest> = report.manifests.iter().map(|m| m.digest).collect();
    assert_eq!(pushed, vec![amd.digest, arm.digest, idx.digest]);
    assert_eq!(report.manifests[1].platform.as_deref(), Some("linux/arm64"));
    assert_eq!(report.blobs_uploaded, 4); // 2 layers + 2 configs

    // Registry-side order: blobs, then manifests by digest (children, index), then tags.
    let log = proxy.log();
    let refs: Vec<&str> = log.iter().filter_map(|r| r.manifest_put()).collect();
    assert_eq!(
        refs,
        vec![
            amd.digest.oci().as_str(),
            &arm.digest.oci(),
            &idx.digest.oci(),
            "latest",
            "20260101"
        ]
    );
    let first_manifest = log.iter().position(|r| r.manifest_put().is_some()).unwrap();
    let last_blob = log.iter().rposition(|r| r.is_blob_upload()).unwrap();
    assert!(
        last_blob < first_manifest,
        "a manifest was pushed before all blobs"
    );

    let direct = format!("{}/ns/multi", reg.host());
    for tag in ["latest", "20260101"] {
        assert_remote_digest(&format!("{direct}:{tag}"), &idx.digest);
    }
    for (arch, m) in [("amd64", &amd), ("arm64", &arm)] {
        assert_remote_digest(&format!("{direct}@{}", m.digest), &m.digest);
        let info = skopeo::inspect(&format!("{direct}:latest"), arch);
        assert_eq!(info["Architecture"], arch);
    }
    let copied = skopeo::copy_to_oci(&format!("{direct}:latest"), &tmp.path().join("copy"));
    assert_eq!(copied, idx.digest);
    for m in [&amd, &arm] {
        assert!(
            tmp.path()
                .join("copy/blobs/sha256")
                .join(m.digest.hex())
                .is_file()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_repush_shared_layers_and_changed_top_layer() {
    let reg = TestRegistry::open();
    let proxy = Proxy::new(reg.addr);
    let tmp = tempfile::tempdir().unwrap();
    let publisher = Publisher::new(opts());
    let host = proxy.host();

    let (base, base_m) = single_arch(&tmp.path().join("base"), b"base top");
    let r1 = publisher
        .push(&base.dir, "hakim-x:latest", &format!("{host}/ns/base"), &[])
        .await
        .unwrap();
    assert_eq!((r1.blobs_uploaded, uploads(&proxy.log())), (4, 4));
    assert_eq!(r1.tags, vec!["latest".to_string()]);

    // Re-push: nothing uploaded, every blob found present.
    proxy.clear();
    let r2 = publisher
        .push(&base.dir, "hakim-x:latest", &format!("{host}/ns/base"), &[])
        .await
        .unwrap();
    assert_eq!(uploads(&proxy.log()), 0);
    assert_eq!(
        (r2.blobs_uploaded, r2.blobs_present, r2.bytes_uploaded),
        (0, 4, 0)
    );
    assert_eq!(r2.digest, base_m.digest);

    // A second image sharing the two base layers: those are mounted, only its own layer and
    // config are uploaded.
    proxy.clear();
    let (var, var_m) = single_arch(&tmp.path().join("var"), b"variant top");
    let r3 = publisher
        .push(
            &var.dir,
            "hakim-x:latest",
            &format!("{host}/ns/variant"),
            &[],
        )
        .await
        .unwrap();
    let log = proxy.log();
    assert_eq!((uploads(&log), mounts(&log)), (2, 2), "{log:#?}");
    assert_eq!(
        (r3.blobs_uploaded, r3.blobs_mounted, r3.blobs_present),
        (2, 2, 0)
    );

    // Changed top layer: exactly that layer + config, then manifest by digest + tag.
    proxy.clear();
    let (var2, var2_m) = single_arch(&tmp.path().join("var2"), b"variant top, changed");
    let r4 = publisher
        .push(
            &var2.dir,
            "hakim-x:latest",
            &format!("{host}/ns/variant"),
            &[],
        )
        .await
        .unwrap();
    let log = proxy.log();
    assert_eq!((uploads(&log), mounts(&log)), (2, 0));
    assert_eq!((r4.blobs_uploaded, r4.blobs_present), (2, 2));
    let refs: Vec<&str> = log.iter().filter_map(|r| r.manifest_put()).collect();
    assert_eq!(refs, vec![var2_m.digest.oci().as_str(), "latest"]);
    assert_ne!(var2_m.digest, var_m.digest);

    // A fresh process (new Publisher) mounts from a declared sibling repository.
    proxy.clear();
    let fresh = Publisher::new(PushOptions {
        mount_candidates: vec![format!("{host}/ns/base")],
        ..opts()
    });
    let r5 = fresh
        .push(
            &var2.dir,
            "hakim-x:latest",
            &format!("{host}/ns/other"),
            &[],
        )
        .await
        .unwrap();
    let log = proxy.log();
    assert_eq!((r5.blobs_mounted, mounts(&log)), (2, 2), "{log:#?}");
    // Mounts of blobs the sibling lacks fall back to upload through the 202 session.
    assert_eq!((r5.blobs_uploaded, uploads(&log)), (2, 2));

    let direct = reg.host();
    assert_remote_digest(&format!("{direct}/ns/base:latest"), &base_m.digest);
    assert_remote_digest(&format!("{direct}/ns/variant:latest"), &var2_m.digest);
    assert_remote_digest(&format!("{direct}/ns/other:latest"), &var2_m.digest);
}

/// Every retry the client reports, rendered.
#[derive(Default)]
struct Retries(std::sync::Mutex<Vec<String>>);
impl RetryObserver for Retries {
    fn retrying(&self, e: &RetryEvent<'_>) {
        self.0.lock().unwrap().push(e.to_string());
    }
}

/// Also issue 13 item 12: a silent registry is cut off by the stall timeout, and every retry is
/// reported with its reason and wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried() {
    let reg = TestRegistry::open();
    let faults = vec![
        // Silent for 10x the stall timeout: only stall detection ends it in time.
        Fault::Stall(Duration::from_secs(5)),
        Fault::Drop,
        Fault::Unavailable,
        Fault::TooMany,
        Fault::Drop,
        Fault::Unavailable,
        Fault::TooMany,
    ];
    let proxy = Proxy::with_faults(reg.addr, faults);
    let tmp = tempfile::tempdir().unwrap();
    let (l, m) = single_arch(&tmp.path().join("l"), b"top");
    let seen = std::sync::Arc::new(Retries::default());
    let o = PushOptions {
        concurrency: 1,
        net: NetOptions {
            stall_timeout: Duration::from_millis(500),
            retry: RetryPolicy {
                max_attempts: 8,
                ..fast_retry()
            },
            retry_log: RetryLog::to(seen.clone()),
        },
        ..opts()
    };
    let report = push(
        &l.dir,
        "hakim-x:latest",
        &format!("{}/ns/x", proxy.host()),
        &tags(&["latest"]),
        &o,
    )
    .await
    .unwrap();
    // The proxy logs the stalled request only when its 5 s silence ends, after the client
    // has moved on: wait for that entry (bounded) rather than racing it.
    let unanswered = || proxy.log().iter().filter(|r| r.status == 0).count();
    for _ in 0..300 {
        if unanswered() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = proxy.log();
    assert_eq!(log.iter().filter(|r| r.status == 429).count(), 2);
    assert_eq!(log.iter().filter(|r| r.status == 503).count(), 2);
    // Two dropped connections and one stalled request.
    assert_eq!(unanswered(), 3, "{log:#?}");
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 7, "{seen:#?}");
    assert!(
        seen[0].contains("attempt 1/8 failed (")
            && seen[0].contains(": stalled: no data for 0.5s (stall timeout"),
        "{seen:#?}"
    );
    // Both `Retry-After: 1` were honoured as the wait.
    let too_many: Vec<_> = seen.iter().filter(|l| l.contains("HTTP 429")).collect();
    assert_eq!(too_many.len(), 2, "{seen:#?}");
    assert!(
        too_many.iter().all(|l| l.ends_with("; retrying in 1.0s")),
        "{seen:#?}"
    );
    assert_eq!(seen.iter().filter(|l| l.contains("HTTP 503")).count(), 2);
    // And really waited: the request after each 429 reached the proxy at least 1 s later (a
    // lower bound the client's own wait sets, so a slow machine cannot break it).
    let mut by_arrival = log.clone();
    by_arrival.sort_by_key(|r| r.received);
    for (i, r) in by_arrival
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == 429)
    {
        let next = by_arrival.get(i + 1).expect("a request after the 429");
        let gap = next.received - r.received;
        assert!(gap >= Duration::from_secs(1), "retried {gap:?} after a 429");
    }
    assert_eq!(report.digest, m.digest);
    assert_remote_digest(&format!("{}/ns/x:latest", reg.host()), &m.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_chunk_resumes_the_upload_session() {
    let reg = TestRegistry::open();
    let proxy = Proxy::dropping_nth(reg.addr, "PATCH", 2);
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&tmp.path().join("layout"));
    let m = l.image(
        "amd64",
        &[tar_layer(&[("opt/big", &noise(9 * 1024 * 1024, 11))])],
    );
    l.tag("hakim-x:latest", &m);
    let r = push(
        &l.dir,
        "hakim-x:latest",
        &format!("{}/ns/resume", proxy.host()),
        &[],
        &opts(),
    )
    .await
    .unwrap();
    assert_eq!(r.digest, m.digest);
    let log = proxy.log();
    let count = |method: &str| log.iter().filter(|x| x.method == method).count();
    // 3 chunks + the one resent; one session per blob (layer + config), never restarted.
    assert_eq!(count("PATCH"), 4, "{log:#?}");
    assert_eq!(count("POST"), 2, "{log:#?}");
    assert!(
        log.iter()
            .any(|x| x.method == "GET" && x.path.contains("/blobs/uploads/") && x.status == 204)
    );
    assert_remote_digest(&format!("{}/ns/resume:latest", reg.host()), &m.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dying_proxy_fails_the_push_and_never_moves_the_tag() {
    let reg = TestRegistry::open();
    let tmp = tempfile::tempdir().unwrap();
    let (old, old_m) = single_arch(&tmp.path().join("old"), b"old top");
    push(
        &old.dir,
        "hakim-x:latest",
        &format!("{}/ns/x", reg.host()),
        &tags(&["stable"]),
        &opts(),
    )
    .await
    .unwrap();

    let proxy = Proxy::dying_after(reg.addr, |r| r.is_blob_upload());
    let (new, new_m) = single_arch(&tmp.path().join("new"), &noise(200_000, 3));
    let err = push(
        &new.dir,
        "hakim-x:latest",
        &format!("{}/ns/x", proxy.host()),
        &tags(&["stable"]),
        &opts(),
    )
    .await
    .unwrap_err();
    assert!(proxy.is_dead());
    assert!(
        matches!(err, PublishError::RetriesExhausted { .. }),
        "{err}"
    );
    // It gave up after exactly the policy's attempts (counted by the client: the dead proxy
    // refuses connections), instead of looping or failing on the first error.
    match &err {
        PublishError::RetriesExhausted { attempts, .. } => {
            assert_eq!(*attempts, fast_retry().max_attempts, "{err}")
        }
        _ => unreachable!(),
    }
    assert!(proxy.log().iter().all(|r| r.manifest_put().is_none()));
    // The tag still names the old image.
    assert_ne!(old_m.digest, new_m.digest);
    assert_remote_digest(&format!("{}/ns/x:stable", reg.host()), &old_m.digest);
}

/// A layout blob with one byte flipped (same size) is refused by the registry, which checks
/// every upload against its digest; hakim names the corrupt file and nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_layout_blob_never_lands_and_is_named() {
    let reg = TestRegistry::open();
    let proxy = Proxy::new(reg.addr);
    let tmp = tempfile::tempdir().unwrap();
    let (old, old_m) = single_arch(&tmp.path().join("old"), b"old top");
    let target = format!("{}/ns/x", proxy.host());
    push(
        &old.dir,
        "hakim-x:latest",
        &target,
        &tags(&["stable"]),
        &opts(),
    )
    .await
    .unwrap();

    let top = noise(300_000, 5);
    let (new, new_m) = single_arch(&tmp.path().join("new"), &top);
    let layer = Sha256Digest::of(&tar_layer(&[("opt/top", &top)]));
    let path = new.dir.join("blobs/sha256").join(layer.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let before = proxy.log().len();
    let err = push(
        &new.dir,
        "hakim-x:latest",
        &target,
        &tags(&["stable"]),
        &opts(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PublishError::Local { .. }), "{err:?}");
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("corrupt blob"),
        "{msg}"
    );
    // The bytes were sent, and refused: no manifest was put, the registry lacks the blob, and
    // the tag still names the old image.
    let log = proxy.log();
    assert!(
        log[before..]
            .iter()
            .any(|r| r.method == "PUT" && r.status == 400),
        "{log:#?}"
    );
    assert!(log[before..].iter().all(|r| r.manifest_put().is_none()));
    let head = crate::support::registry::get_status(reg.addr, &format!("/v2/ns/x/blobs/{layer}"));
    assert_eq!(head, Some(404));
    assert_ne!(old_m.digest, new_m.digest);
    assert_remote_digest(&format!("{}/ns/x:stable", reg.host()), &old_m.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_push_fails_fast_naming_registry_and_repository() {
    let reg = TestRegistry::open();
    let proxy = Proxy::with_faults(reg.addr, vec![Fault::DenyWrites]);
    let tmp = tempfile::tempdir().unwrap();
    let (l, _) = single_arch(&tmp.path().join("l"), b"top");
    let err = push(
        &l.dir,
        "hakim-x:latest",
        &format!("{}/ns/locked", proxy.host()),
        &[],
        &opts(),
    )
    .await
    .unwrap_err();
    // Blobs go up in parallel, so several may meet the 403; none may meet it twice.
    let log = proxy.log();
    let mut denied: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for r in log.iter().filter(|r| r.status == 403) {
        *denied
            .entry((r.method.as_str(), r.path.as_str()))
            .or_default() += 1;
    }
    assert!(!denied.is_empty(), "no request was denied: {log:#?}");
    // Every blob opens its upload with a POST to the same path, after its own HEAD: a retried
    // 403 shows as more POSTs than HEADs. Any other denied request names its blob or tag.
    let heads = log
        .iter()
        .filter(|r| r.method == "HEAD" && r.path.contains("/blobs/"))
        .count();
    for ((method, path), n) in &denied {
        let opens_upload = *method == "POST" && path.ends_with("/blobs/uploads/");
        let limit = if opens_upload { heads } else { 1 };
        assert!(
            *n <= limit,
            "a 403 was retried: {method} {path} denied {n} times ({heads} blob HEADs): {log:#?}"
        );
    }
    assert!(matches!(err, PublishError::Denied { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&proxy.host()) && msg.contains("ns/locked") && msg.contains("DENIED"),
        "{msg}"
    );
    assert!(proxy.log().iter().all(|r| r.manifest_put().is_none()));
}

fn assert_no_secret(secret: &str, texts: &[String]) {
    for t in texts {
        assert!(!t.contains(secret), "secret leaked into: {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_right_and_wrong_credentials() {
    let secret = "s3cret-Pa55word-xyz";
    let reg = TestRegistry::with_basic_auth("alice", secret);
    let tmp = tempfile::tempdir().unwrap();
    let (l, m) = single_arch(&tmp.path().join("l"), b"top");
    let target = format!("{}/ns/private", reg.host());

    let anon = push(&l.dir, "hakim-x:latest", &target, &[], &opts())
        .await
        .unwrap_err();
    assert!(matches!(anon, PublishError::Auth { .. }), "{anon}");
    assert!(anon.to_string().contains("no credentials"), "{anon}");

    let wrong = PushOptions {
        credentials: Some(Credentials::new("alice", "not-the-password")),
        ..opts()
    };
    // Through a logging proxy, to count what the wrong credential caused at the registry.
    let proxy = Proxy::new(reg.addr);
    let via_proxy = format!("{}/ns/private", proxy.host());
    let err = push(&l.dir, "hakim-x:latest", &via_proxy, &[], &wrong)
        .await
        .unwrap_err();
    let refused = proxy
        .log()
        .iter()
        .filter(|r| r.authorization.is_some() && r.status == 401)
        .count();
    assert_eq!(refused, 1, "auth failure was retried: {:#?}", proxy.log());
    let msg = err.to_string();
    assert!(matches!(err, PublishError::Auth { .. }), "{msg}");
    assert!(
        msg.contains(&proxy.host()) && msg.contains("ns/private"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-password"));

    let right = PushOptions {
        credentials: Some(Credentials::new("alice", secret)),
        ..opts()
    };
    let report = push(&l.dir, "hakim-x:latest", &target, &[], &right)
        .await
        .unwrap();
    assert_eq!(report.digest, m.digest);
    assert_eq!(report.auth, CredentialOrigin::Explicit);
    let (_, d) = skopeo::raw(
        &format!("{target}:latest"),
        Some(&format!("alice:{secret}")),
    );
    assert_eq!(d, m.digest);

    assert_no_secret(
        secret,
        &[
            format!("{err:?}"),
            format!("{anon:?}"),
            serde_json::to_string(&report).unwrap(),
            format!("{report:?}"),
            format!("{right:?}"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_like_ghcr() {
    let reg = TestRegistry::open();
    let token = "ghs_bearerTOKENvalue123";
    let password = "ghp_personalAccessTokenXYZ";
    let proxy = Proxy::with_bearer(
        reg.addr,
        BearerMock {
            username: "octo".into(),
            password: password.into(),
            token: token.into(),
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let (l, m) = multi_image(&tmp.path().join("l"));
    let target = format!("{}/owner/hakim-base", proxy.host());

    let good = PushOptions {
        credentials: Some(Credentials::new("octo", password)),
        ..opts()
    };
    let report: PushReport = push(&l.dir, "hakim-x:latest", &target, &tags(&["latest"]), &good)
        .await
        .unwrap();
    assert_eq!(report.digest, m.digest);
    let log = proxy.log();
    let token_calls: Vec<&Logged> = log.iter().filter(|r| r.path == "/token").collect();
    assert!(
        !token_calls.is_empty() && token_calls.len() <= 2,
        "tokens not cached: {}",
        token_calls.len()
    );
    assert!(
        token_calls
            .iter()
            .all(|r| r.status == 200 && r.query.contains("service=mock-ghcr"))
    );
    let bearer = format!("Bearer {token}");
    let authed = log
        .iter()
        .filter(|r| r.authorization.as_deref() == Some(bearer.as_str()))
        .count();
    assert!(authed >= 5, "{log:#?}");
    assert_eq!(
        log.iter().filter(|r| r.status == 401).count(),
        1,
        "challenge should be answered once"
    );
    assert_remote_digest(
        &format!("{}/owner/hakim-base:latest", reg.host()),
        &m.digest,
    );

    let bad = PushOptions {
        credentials: Some(Credentials::new("octo", "wrong-pat-0000")),
        ..opts()
    };
    let err = push(&l.dir, "hakim-x:latest", &target, &[], &bad)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PublishError::Auth { .. }), "{msg}");
    assert!(
        msg.contains(&proxy.host()) && msg.contains("owner/hakim-base"),
        "{msg}"
    );
    assert_no_secret(
        password,
        &[
            msg.clone(),
            format!("{err:?}"),
            serde_json::to_string(&report).unwrap(),
        ],
    );
    assert_no_secret(
        token,
        &[
            msg,
            format!("{err:?}"),
            serde_json::to_string(&report).unwrap(),
        ],
    );
    assert_no_secret("wrong-pat-0000", &[format!("{err:?}")]);
}

fn multi_image(dir: &Path) -> (Layout, Desc) {
    single_arch(dir, b"bearer top")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_auths_and_credential_helper() {
    let secret = "helper-and-auths-secret";
    let reg = TestRegistry::with_basic_auth("bob", secret);
    let tmp = tempfile::tempdir().unwrap();
    let (l, m) = single_arch(&tmp.path().join("l"), b"top");
    let target = format!("{}/ns/cfg", reg.host());

    // `auths` with base64 user:password.
    let cfg_dir = tmp.path().join("docker-auths");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let auth = base64_encode(&format!("bob:{secret}"));
    let cfg = serde_json::json!({"auths": {reg.host(): {"auth": auth}}});
    std::fs::write(cfg_dir.join("config.json"), cfg.to_string()).unwrap();
    let o = PushOptions {
        credential_context: CredentialContext {
            docker_config_dir: Some(cfg_dir),
            ..Default::default()
        },
        ..opts()
    };
    let r = push(&l.dir, "hakim-x:latest", &target, &tags(&["auths"]), &o)
        .await
        .unwrap();
    assert_eq!(
        (r.auth, r.digest),
        (CredentialOrigin::DockerConfig, m.digest)
    );

    // `credHelpers` naming a helper script found on PATH.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let seen = tmp.path().join("helper-stdin");
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 2\ncat > '{}'\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"bob\",\"Secret\":\"{secret}\"}}' \"$(cat '{}')\"\n",
        seen.display(),
        seen.display()
    );
    let helper = bin.join("docker-credential-hakimtest");
    std::fs::write(&helper, script).unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg_dir = tmp.path().join("docker-helper");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = serde_json::json!({"credHelpers": {reg.host(): "hakimtest"}, "auths": {}});
    std::fs::write(cfg_dir.join("config.json"), cfg.to_string()).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let o = PushOptions {
        credential_context: CredentialContext {
            docker_config_dir: Some(cfg_dir.clone()),
            helper_path: Some(path.clone().into()),
            ..Default::default()
        },
        ..opts()
    };
    let r = push(&l.dir, "hakim-x:latest", &target, &tags(&["helper"]), &o)
        .await
        .unwrap();
    assert_eq!(
        (r.auth, r.digest),
        (CredentialOrigin::CredentialHelper, m.digest)
    );
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), reg.host());

    // `credsStore` covers registries without their own entry.
    let cfg_dir = tmp.path().join("docker-store");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = serde_json::json!({"credsStore": "hakimtest"});
    std::fs::write(cfg_dir.join("config.json"), cfg.to_string()).unwrap();
    let store = PushOptions {
        credential_context: CredentialContext {
            docker_config_dir: Some(cfg_dir),
            helper_path: Some(path.clone().into()),
            ..Default::default()
        },
        ..opts()
    };
    let r = push(&l.dir, "hakim-x:latest", &target, &tags(&["store"]), &store)
        .await
        .unwrap();
    assert_eq!(r.auth, CredentialOrigin::CredentialHelper);

    // A helper that knows nothing leaves us anonymous, which this registry refuses.
    std::fs::write(
        &helper,
        "#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n",
    )
    .unwrap();
    let err = push(&l.dir, "hakim-x:latest", &target, &[], &o)
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Auth { .. }), "{err}");
    assert_no_secret(
        secret,
        &[
            err.to_string(),
            format!("{err:?}"),
            format!("{o:?}"),
            serde_json::to_string(&r).unwrap(),
        ],
    );
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umoci_built_layout_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("umoci");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("umoci")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("umoci missing (apt-get install umoci): {e}"));
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let d = dir.to_str().unwrap();
    run(&["init", "--layout", d]);
    run(&["new", "--image", &format!("{d}:v1")]);
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, "hello from umoci\n").unwrap();
    run(&[
        "insert",
        "--image",
        &format!("{d}:v1"),
        file.to_str().unwrap(),
        "/hello.txt",
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let local: Sha256Digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let reg = TestRegistry::open();
    let r = push(
        &dir,
        "hakim-umoci:v1",
        &format!("{}/ns/umoci", reg.host()),
        &[],
        &opts(),
    )
    .await
    .unwrap();
    assert_eq!((r.digest, r.tags.clone()), (local, vec!["v1".to_string()]));
    assert_remote_digest(&format!("{}/ns/umoci:v1", reg.host()), &local);

    let missing = push(
        &dir,
        "hakim-umoci:nope",
        &format!("{}/ns/umoci", reg.host()),
        &[],
        &opts(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(missing, PublishError::RefNotFound { .. }),
        "{missing}"
    );
    assert!(missing.to_string().contains("available: v1"), "{missing}");
}
