//! Debian resolution, lock file and fetch, end to end against the configured real mirror.

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use crate::support::*;

// Agreement with apt (mmdebstrap) is tested in `parity.rs`.

/// The archive mirror, discovered exactly as hakim does for users.
fn mirror() -> String {
    crate::support::mirror_proxy::mirrors().0
}

fn lock_json(s: &Scratch) -> serde_json::Value {
    serde_json::from_str(&s.read("hakim.lock")).unwrap()
}

fn names(lock: &serde_json::Value, key: &str) -> BTreeSet<String> {
    lock["layers"][key]["packages"]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in lock"))
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn lock_is_reused_and_offline_fetch_touches_no_network() {
    // Every request goes through a counting front for the mirrors: the evidence is what it saw.
    let mirror = crate::support::mirror_proxy::MirrorProxy::start();
    let s = Scratch::fixture("debian");
    let hakim = || {
        let mut c = s.hakim();
        c.envs(mirror.env());
        c
    };
    run_ok(hakim().arg("lock"));
    let lock = lock_json(&s);
    assert!(
        lock["suites"]["trixie"]["inrelease_sha256"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let base = names(&lock, "anchor@amd64");
    let extra = names(&lock, "anchor/extra@amd64");
    assert!(
        extra.contains("file") && !extra.contains("bash"),
        "upper layer holds only what it adds: {extra:?}"
    );
    assert!(base.contains("bash") && base.contains("curl"));
    assert!(base.is_disjoint(&extra));
    let p = &lock["layers"]["anchor@amd64"]["packages"][0];
    for field in [
        "name",
        "version",
        "architecture",
        "suite",
        "path",
        "size",
        "sha256",
    ] {
        assert!(!p[field].is_null(), "lock entry lacks {field}: {p}");
    }

    // Cold fetch downloads every locked .deb once; a repeat is only ever a retry hakim logged
    // (the front answers only after its own upstream download, so a slow one can stall).
    mirror.clear();
    let out = run_ok(hakim().args(["fetch", "extra"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let retried = stderr
        .lines()
        .filter(|l| l.starts_with("retry: ") && l.contains(".deb"))
        .count();
    let n = base.len() + extra.len();
    let seen = mirror.paths(".deb");
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), n, "every locked .deb is fetched");
    assert_eq!(
        seen.len(),
        n + retried,
        "a .deb was fetched again without a logged retry:\n{stderr}"
    );
    mirror.clear();
    run_ok(hakim().args(["fetch", "extra"]));
    assert_eq!(mirror.count(".deb"), 0, "a warm fetch downloaded .debs");

    // Offline: lock + cache are enough, and the mirror sees no request at all.
    mirror.clear();
    run_ok(hakim().args(["fetch", "extra", "--offline"]));
    assert_eq!(mirror.total(), 0, "--offline touched the mirror");

    // A second `hakim lock` keeps every entry (no re-resolution, same file).
    let before = s.read("hakim.lock");
    run_ok(hakim().arg("lock"));
    assert_eq!(s.read("hakim.lock"), before);

    // A corrupted cached .deb is detected and fetched again.
    let sha = lock["layers"]["anchor/extra@amd64"]["packages"][0]["sha256"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let cached = s.cache().join("blobs/sha256").join(&sha);
    fs::write(&cached, b"tampered").unwrap();
    mirror.clear();
    run_ok(hakim().args(["fetch", "extra"]));
    assert_eq!(
        mirror.count(".deb"),
        1,
        "only the corrupt .deb is fetched again"
    );
    assert_eq!(
        hakim::digest::Sha256Digest::of(&fs::read(&cached).unwrap()).hex(),
        sha
    );
}

#[test]
fn stale_and_broken_locks_fail_clearly() {
    let s = Scratch::fixture("debian");
    run_ok(s.hakim().arg("lock"));

    // A lock pointing at a version the mirror does not have.
    let good = s.read("hakim.lock");
    let lock = lock_json(&s);
    let p = &lock["layers"]["anchor/extra@amd64"]["packages"][0];
    let (path, version) = (p["path"].as_str().unwrap(), p["version"].as_str().unwrap());
    let bad = good
        .replace(
            path,
            &path.replace(version.split(':').next_back().unwrap(), "99.99-1"),
        )
        .replace(&format!("\"{version}\""), "\"99.99-1\"");
    s.write("hakim.lock", &bad);
    let err = run_err(s.hakim().args(["fetch", "extra"]));
    assert!(
        err.contains("99.99-1")
            && err.contains("no longer in the repository")
            && err.contains("hakim lock --update"),
        "{err}"
    );

    // A variant changed after locking: build refuses and says what to run.
    s.write("hakim.lock", &good);
    s.write("layers/extra/layer.yaml", "packages: [file, tree]\n");
    let err = run_err(s.hakim().args(["fetch", "extra"]));
    assert!(
        err.contains("no longer matches variant `extra`") && err.contains("run `hakim lock extra`"),
        "{err}"
    );
    let err = run_err(s.hakim().args(["build", "extra"]));
    assert!(err.contains("run `hakim lock extra`"), "{err}");
    // `hakim lock` re-resolves only that entry.
    run_ok(s.hakim().args(["lock", "extra"]));
    let after = lock_json(&s);
    assert!(names(&after, "anchor/extra@amd64").contains("tree"));
    assert_eq!(
        after["layers"]["anchor@amd64"],
        lock["layers"]["anchor@amd64"]
    );

    // Garbage in the lock file names the file.
    s.write("hakim.lock", "{ not json");
    let err = run_err(s.hakim().args(["fetch", "extra"]));
    assert!(
        err.contains("hakim.lock") && err.contains("hakim lock"),
        "{err}"
    );
}

#[test]
fn resolution_errors_name_the_package() {
    let s = Scratch::fixture("debian");
    s.write("layers/extra/layer.yaml", "packages: [nodjs]\n");
    let err = run_err(s.hakim().args(["lock", "extra"]));
    assert!(
        err.contains("no package `nodjs`")
            && err.contains("did you mean `nodejs`")
            && err.contains("layer `extra`"),
        "{err}"
    );

    s.write(
        "layers/extra/layer.yaml",
        "packages: [postfix, exim4-daemon-light]\n",
    );
    let err = run_err(s.hakim().args(["lock", "extra"]));
    assert!(err.to_lowercase().contains("conflict"), "{err}");
    assert!(
        !s.project().join("hakim.lock").exists() || !s.read("hakim.lock").contains("postfix"),
        "a failed lock must not be written"
    );
}

#[test]
fn tampered_inrelease_is_refused() {
    let real = {
        let url = format!("{}/dists/trixie/InRelease", mirror());
        let out = run_ok(Command::new("curl").args(["-fsS", &url]));
        out.stdout
    };
    let tampered = String::from_utf8(real)
        .unwrap()
        .replacen("Label: Debian", "Label: Debiam", 1)
        .into_bytes();
    let server = FileServer::start(vec![("/dists/trixie/InRelease".into(), tampered)]);
    let s = Scratch::fixture("debian");
    s.write(
        "variants/anchor.yaml",
        &s.read("variants/anchor.yaml").replace(
            "components: [main]",
            "components: [main]\n  updates: false\n  security: false",
        ),
    );
    let err = run_err(
        s.hakim()
            .args(["lock", "anchor"])
            .env("HAKIM_DEBIAN_MIRROR", server.url()),
    );
    assert!(
        err.contains("InRelease") && err.to_lowercase().contains("signature"),
        "{err}"
    );
    assert!(!s.project().join("hakim.lock").exists());
}

#[test]
fn snapshot_pins_every_request_to_the_timestamp() {
    // A snapshot service on 127.0.0.1 (the counting front, answering the snapshot layout from
    // the configured mirrors): every request must carry the variant's timestamp.
    let front = crate::support::mirror_proxy::MirrorProxy::start();
    let s = Scratch::fixture("debian");
    let pin = |ts: &str| {
        s.write(
            "variants/anchor.yaml",
            &s.read("variants/anchor.yaml")
                .replace(
                    "  components: [main]\n",
                    &format!("  components: [main]\n  snapshot: \"{ts}\"\n"),
                )
                .lines()
                .filter(|l| !l.contains("snapshot:") || l.contains(ts))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )
    };
    let hakim = || {
        let mut c = s.hakim();
        // Only the snapshot service is configured; a mirror from the environment must not leak in.
        c.env_remove("HAKIM_DEBIAN_MIRROR")
            .env_remove("HAKIM_DEBIAN_SECURITY_MIRROR")
            .env("HAKIM_DEBIAN_SNAPSHOT_MIRROR", front.snapshot_service());
        c
    };
    let ts = "20251101T000000Z";
    pin(ts);
    run_ok(hakim().args(["lock", "anchor"]));
    let seen = front.paths("");
    let mut inreleases: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|p| p.ends_with("/InRelease"))
        .collect();
    inreleases.sort_unstable();
    assert_eq!(
        inreleases,
        [
            format!("/archive/debian-security/{ts}/dists/trixie-security/InRelease"),
            format!("/archive/debian/{ts}/dists/trixie-updates/InRelease"),
            format!("/archive/debian/{ts}/dists/trixie/InRelease"),
        ],
        "all requests: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|p| p.starts_with(&format!("/archive/debian/{ts}/"))
                || p.starts_with(&format!("/archive/debian-security/{ts}/"))),
        "a request left the snapshot: {seen:?}"
    );
    let lock = lock_json(&s);
    for suite in ["trixie", "trixie-updates", "trixie-security"] {
        assert!(
            lock["suites"][suite]["inrelease_sha256"].is_string(),
            "{suite} missing from the lock: {}",
            lock["suites"]
        );
    }
    let base = names(&lock, "anchor@amd64");
    assert!(base.contains("bash") && base.contains("curl"), "{base:?}");

    // The .debs come from the snapshot too.
    front.clear();
    run_ok(hakim().args(["fetch", "anchor"]));
    let debs = front.paths(".deb");
    assert!(!debs.is_empty(), "fetch downloaded nothing");
    assert!(
        debs.iter()
            .all(|p| p.starts_with(&format!("/archive/debian/{ts}/pool/"))
                || p.starts_with(&format!("/archive/debian-security/{ts}/pool/"))),
        "a .deb came from outside the snapshot: {debs:?}"
    );

    // Moving the snapshot is a new request: the lock is resolved against the new timestamp.
    let later = "20251201T000000Z";
    pin(later);
    front.clear();
    run_ok(hakim().args(["lock", "anchor"]));
    let relocked = lock_json(&s);
    assert_ne!(
        relocked["layers"]["anchor@amd64"]["request"], lock["layers"]["anchor@amd64"]["request"],
        "the lock entry was kept although the snapshot moved"
    );
    let seen = front.paths("/InRelease");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.iter().all(|p| p.contains(&format!("/{later}/dists/"))),
        "{seen:?}"
    );
}

#[test]
fn image_apt_sources_use_image_mirror_over_the_build_mirror() {
    use hakim::debian::packages::image_apt_sources;
    use hakim::spec::DebianSettings;
    let bases: std::collections::BTreeMap<String, String> = [
        ("trixie", "http://127.0.0.1:1/build-archive"),
        ("trixie-updates", "http://127.0.0.1:1/build-archive"),
        ("trixie-security", "http://127.0.0.1:1/build-security"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut settings = DebianSettings {
        suite: Some("trixie".into()),
        ..DebianSettings::default()
    };
    // By default the image keeps the mirrors the build used.
    let text = image_apt_sources(&settings, &bases).unwrap();
    assert!(
        text.contains("URIs: http://127.0.0.1:1/build-archive\nSuites: trixie trixie-updates\n")
            && text.contains("URIs: http://127.0.0.1:1/build-security\nSuites: trixie-security\n"),
        "{text}"
    );
    // image_mirror / image_security_mirror replace them in the image only.
    settings.image_mirror = Some("http://apt.invalid/debian".into());
    settings.image_security_mirror = Some("http://apt.invalid/debian-security".into());
    let text = image_apt_sources(&settings, &bases).unwrap();
    assert!(
        text.contains("URIs: http://apt.invalid/debian\nSuites: trixie trixie-updates\n")
            && text.contains("URIs: http://apt.invalid/debian-security\nSuites: trixie-security\n")
            && !text.contains("build-"),
        "{text}"
    );
}
