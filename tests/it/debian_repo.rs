//! Verified repository access against the real Debian mirror the host is configured with,
//! plus fault injection through a 127.0.0.1 server holding (tampered) copies of real metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hakim::cache::Cas;
use hakim::debian::control;
use hakim::debian::release::{self, Keyring, Release, ReleaseError};
use hakim::debian::repo::{self, HostContext, RepoError, RepoSpec};
use hakim::debian::sources::{self, MirrorConfig};
use hakim::fetch::{FetchError, FetchItem, FetchOptions, Fetcher};

use crate::support::mirror_proxy::MirrorProxy;

/// A CAS shared by these tests so the large indexes are downloaded once per target dir.
fn shared_cas() -> Cas {
    Cas::open(Path::new(env!("CARGO_TARGET_TMPDIR")).join("hakim-debian-repo-cas")).unwrap()
}

fn fetcher(cas: Cas, offline: bool) -> Fetcher {
    Fetcher::new(
        cas,
        FetchOptions {
            offline,
            ..FetchOptions::default()
        },
    )
    .unwrap()
}

/// The archive and security URLs exactly as a user's build would discover them.
fn discovered() -> (String, String) {
    let ctx = HostContext::current();
    let host = sources::read_apt_sources(&ctx.apt_dir).unwrap();
    let m = sources::discover(&MirrorConfig::default(), &ctx.env, &host, &ctx.apt_dir)
        .unwrap_or_else(|e| panic!("these tests need a Debian mirror: {e}"));
    let sec = m
        .security
        .first()
        .expect("no security mirror discovered")
        .url
        .clone();
    (m.archive[0].url.clone(), sec)
}

fn spec(suite: &str, mirror: MirrorConfig, updates: bool, security: bool) -> RepoSpec {
    RepoSpec {
        suite: suite.into(),
        components: vec!["main".into()],
        archs: vec!["amd64".into()],
        updates,
        security,
        mirror,
        keyring: None,
    }
}

async fn real_inrelease(base: &str, suite: &str) -> Vec<u8> {
    let f = fetcher(
        Cas::open(tempfile::tempdir().unwrap().keep()).unwrap(),
        false,
    );
    let url = format!("{base}/dists/{suite}/InRelease");
    f.get(&url)
        .await
        .unwrap_or_else(|e| panic!("mirror unreachable, cannot test: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_real_trixie_with_updates_and_security() {
    let cas = shared_cas();
    let f = fetcher(cas.clone(), false);
    let idx = repo::load(&spec("trixie", MirrorConfig::default(), true, true), &f)
        .await
        .unwrap_or_else(|e| panic!("loading trixie from the discovered mirror failed: {e}"));
    let names: Vec<&str> = idx.suites.iter().map(|s| s.suite.as_str()).collect();
    assert_eq!(names, ["trixie", "trixie-updates", "trixie-security"]);

    let main = &idx.suites[0];
    assert_eq!(main.release.codename, "trixie");
    assert!(!main.date.is_empty());
    assert!(
        cas.contains(&main.inrelease_sha256),
        "verified InRelease not kept in the CAS"
    );
    assert_eq!(main.packages.len(), 1);
    let pf = &main.packages[0];
    assert_eq!((pf.component.as_str(), pf.arch.as_str()), ("main", "amd64"));
    assert!(pf.path.starts_with("main/binary-amd64/Packages"));
    let paras = control::parse(&pf.text).unwrap();
    assert!(
        paras.len() > 10_000,
        "only {} packages in trixie main",
        paras.len()
    );
    let bash = paras
        .iter()
        .find(|p| p.get("Package") == Some("bash"))
        .expect("Package: bash missing");
    let filename = bash.get("Filename").unwrap();
    assert!(repo::deb_url(&main.base_url, filename).ends_with(".deb"));
    // No-Support-for-Architecture-all: arch-all packages are in binary-amd64.
    assert!(paras.iter().any(|p| p.get("Architecture") == Some("all")));

    for s in &idx.suites[1..] {
        assert_eq!(s.packages.len(), 1, "{}", s.suite);
        control::parse(&s.packages[0].text).unwrap_or_else(|e| panic!("{}: {e}", s.suite));
    }
    let sec = &idx.suites[2];
    assert_eq!(sec.release.origin, "Debian");
    assert!(
        sec.release.valid_until.is_some(),
        "security Release should carry Valid-Until"
    );
    assert!(
        sec.packages[0].text.contains("Package: "),
        "trixie-security main/amd64 is empty"
    );

    // Indexes are now reused from the CAS: a second load, counted at a front of the same
    // mirrors, only re-reads the three InRelease files.
    let front = MirrorProxy::start();
    let [(_, archive), (_, security)] = front.env();
    let via_front = MirrorConfig {
        mirror: Some(archive),
        security_mirror: Some(security),
        ..MirrorConfig::default()
    };
    let again = fetcher(cas.clone(), false);
    let idx2 = repo::load(&spec("trixie", via_front, true, true), &again)
        .await
        .unwrap();
    let mut seen = front.paths("");
    seen.sort();
    assert_eq!(
        seen,
        [
            "/archive/dists/trixie-updates/InRelease",
            "/archive/dists/trixie/InRelease",
            "/security/dists/trixie-security/InRelease",
        ],
        "a warm load must fetch only the InRelease files"
    );

    // And they are available offline by their Release digests: nothing reaches the front.
    front.clear();
    let off = fetcher(cas, true);
    for s in &idx2.suites {
        let pf = &s.packages[0];
        let item = FetchItem {
            url: format!("{}/dists/{}/{}", s.base_url, s.suite, pf.path),
            sha256: pf.sha256,
            size: None,
            label: pf.path.clone(),
        };
        off.fetch(item).await.unwrap();
    }
    assert_eq!(front.total(), 0, "offline fetches went to the network");
}

/// A 127.0.0.1 server with fixed answers per path (404 otherwise); counts and records requests.
struct Local {
    base: String,
    hits: Arc<AtomicUsize>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
    _server: Arc<tiny_http::Server>,
}

fn serve(files: HashMap<String, Vec<u8>>, fallback: Option<Vec<u8>>) -> Local {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (srv, h, log) = (server.clone(), hits.clone(), paths.clone());
    std::thread::spawn(move || {
        for req in srv.incoming_requests() {
            h.fetch_add(1, Ordering::SeqCst);
            log.lock().unwrap().push(req.url().to_string());
            let body = files.get(req.url()).or(fallback.as_ref()).cloned();
            let _ = match body {
                Some(b) => req.respond(tiny_http::Response::from_data(b)),
                None => req.respond(tiny_http::Response::empty(404)),
            };
        }
    });
    Local {
        base: format!("http://127.0.0.1:{port}/debian"),
        hits,
        paths,
        _server: server,
    }
}

fn local_mirror(base: &str) -> MirrorConfig {
    MirrorConfig {
        mirror: Some(base.to_string()),
        ..Default::default()
    }
}

#[tokio::test]
async fn tampered_inrelease_is_refused() {
    let (archive, _) = discovered();
    let real = String::from_utf8(real_inrelease(&archive, "trixie").await).unwrap();
    // Point the signed Packages.xz entry at other content: exactly what an attacker needs.
    let needle = " main/binary-amd64/Packages.xz";
    let line_end = real
        .find(needle)
        .expect("no main/binary-amd64/Packages.xz in InRelease");
    let line_start = real[..line_end].rfind('\n').unwrap() + 2;
    let mut tampered = real.clone().into_bytes();
    tampered[line_start] = if tampered[line_start] == b'0' {
        b'1'
    } else {
        b'0'
    };
    assert_ne!(tampered, real.as_bytes());

    let files = HashMap::from([("/debian/dists/trixie/InRelease".to_string(), tampered)]);
    let srv = serve(files, None);
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(Cas::open(dir.path()).unwrap(), false);
    let err = repo::load(&spec("trixie", local_mirror(&srv.base), false, false), &f)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RepoError::Release(ReleaseError::BadSignature { .. })),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{}/dists/trixie/InRelease", srv.base)),
        "{msg}"
    );
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        1,
        "nothing may be fetched after a bad signature"
    );
}

#[tokio::test]
async fn packages_with_wrong_hash_are_refused() {
    let (archive, _) = discovered();
    let real = real_inrelease(&archive, "trixie").await;
    let text = release::verify_inrelease(
        &Keyring::load(Path::new(release::DEFAULT_KEYRING)).unwrap(),
        &real,
        "t",
    )
    .unwrap();
    let listed = Release::parse(&text, "t")
        .unwrap()
        .file("main/binary-amd64/Packages.xz")
        .copied()
        .unwrap();

    let mut evil = Vec::new();
    {
        use std::io::Write;
        let mut enc = liblzma::write::XzEncoder::new(&mut evil, 6);
        enc.write_all(b"Package: bash\nVersion: 99\nFilename: pool/evil.deb\n")
            .unwrap();
        enc.finish().unwrap();
    }
    let files = HashMap::from([("/debian/dists/trixie/InRelease".to_string(), real)]);
    let srv = serve(files, Some(evil.clone()));
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(dir.path()).unwrap();
    let f = fetcher(cas.clone(), false);
    let err = repo::load(&spec("trixie", local_mirror(&srv.base), false, false), &f)
        .await
        .unwrap_err();
    let msg = err.to_string();
    let RepoError::Fetch(FetchError::Mismatch {
        url,
        expected,
        actual,
    }) = &err
    else {
        panic!("expected a sha256 mismatch, got: {msg}");
    };
    assert!(url.starts_with(&srv.base), "{msg}");
    assert_eq!(*expected, listed.sha256);
    assert_eq!(*actual, hakim::digest::Sha256Digest::of(&evil));
    assert!(!cas.contains(actual), "refused content reached the cache");
}

#[tokio::test]
async fn expired_real_security_release_is_refused_unless_snapshot() {
    let (_, security) = discovered();
    let real = real_inrelease(&security, "trixie-security").await;
    let ring = Keyring::load(Path::new(release::DEFAULT_KEYRING)).unwrap();
    let text = release::verify_inrelease(&ring, &real, "trixie-security InRelease")
        .unwrap_or_else(|e| panic!("host keyring does not verify trixie-security: {e}"));
    let r = Release::parse(&text, "t").unwrap();
    let until = r.valid_until.expect("trixie-security has Valid-Until");
    r.check(
        "trixie-security",
        until - time::Duration::hours(1),
        true,
        "t",
    )
    .unwrap();
    let err = r
        .check(
            "trixie-security",
            until + time::Duration::days(1),
            true,
            "t",
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ReleaseError::Expired { .. }), "{msg}");
    assert!(
        msg.contains("trixie-security") && msg.contains(r.valid_until_text.as_deref().unwrap()),
        "{msg}"
    );
    // Snapshots are old by design.
    r.check(
        "trixie-security",
        until + time::Duration::days(1),
        false,
        "t",
    )
    .unwrap();
}

#[tokio::test]
async fn expired_metadata_from_the_mirror_fails_the_load() {
    // Same real data, loaded through `load_with` at a time after its Valid-Until.
    let (archive, _) = discovered();
    let real = real_inrelease(&archive, "trixie-updates").await;
    let files = HashMap::from([("/debian/dists/trixie-updates/InRelease".to_string(), real)]);
    let srv = serve(files, None);
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(Cas::open(dir.path()).unwrap(), false);
    let mut ctx = HostContext::current();
    ctx.now += time::Duration::days(365);
    let err = repo::load_with(
        &spec("trixie-updates", local_mirror(&srv.base), false, false),
        &f,
        &ctx,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RepoError::Release(ReleaseError::Expired { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn keyring_without_debian_keys_refuses_the_real_mirror() {
    let (archive, _) = discovered();
    let dir = tempfile::tempdir().unwrap();
    // A real keyring that holds only Debian's removed keys, none of which signs trixie.
    let removed = PathBuf::from("/usr/share/keyrings/debian-archive-removed-keys.gpg");
    assert!(
        removed.is_file(),
        "{} missing (package debian-archive-keyring)",
        removed.display()
    );
    let f = fetcher(Cas::open(dir.path()).unwrap(), false);
    let mut s = spec("trixie", local_mirror(&archive), false, false);
    s.keyring = Some(removed.clone());
    let err = repo::load(&s, &f).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RepoError::Release(ReleaseError::Untrusted { .. })),
        "{msg}"
    );
    assert!(msg.contains(&removed.display().to_string()), "{msg}");
}

#[tokio::test]
async fn host_candidates_fall_through_to_a_verified_mirror() {
    let (archive, _) = discovered();
    let srv = serve(HashMap::new(), None);
    let apt = tempfile::tempdir().unwrap();
    let list = format!("deb {} trixie main\ndeb {archive} trixie main\n", srv.base);
    std::fs::write(apt.path().join("sources.list"), list).unwrap();
    let ctx = HostContext {
        env: sources::MirrorEnv::default(),
        apt_dir: apt.path().to_path_buf(),
        now: time::OffsetDateTime::now_utc(),
    };
    let f = fetcher(shared_cas(), false);
    let idx = repo::load_with(
        &spec("trixie", MirrorConfig::default(), false, false),
        &f,
        &ctx,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(idx.suites[0].base_url, archive);
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        1,
        "the 404 candidate was not tried first"
    );
}

/// A throwaway gpg signing key in its own home, and its public keyring: lets a test publish a
/// Release that differs from Debian's and is still validly signed.
struct Signer {
    home: tempfile::TempDir,
}

impl Signer {
    fn new() -> Self {
        crate::support::require_bin("gpg", "gpg");
        let home = tempfile::tempdir().unwrap();
        let gpg = |args: &[&str]| {
            crate::support::run_ok(
                std::process::Command::new("gpg")
                    .arg("--homedir")
                    .arg(home.path())
                    .args(["--batch", "--quiet", "--pinentry-mode", "loopback"])
                    .args(["--passphrase", ""])
                    .args(args),
            )
        };
        gpg(&[
            "--quick-gen-key",
            "hakim test <t@example.invalid>",
            "ed25519",
            "sign",
            "never",
        ]);
        let public = gpg(&["--export"]).stdout;
        std::fs::write(home.path().join("keyring.gpg"), public).unwrap();
        Self { home }
    }

    fn keyring(&self) -> PathBuf {
        self.home.path().join("keyring.gpg")
    }

    /// `release` clearsigned, as an InRelease.
    fn inrelease(&self, release: &str) -> Vec<u8> {
        let input = self.home.path().join("Release");
        std::fs::write(&input, release).unwrap();
        let out = self.home.path().join("InRelease");
        let _ = std::fs::remove_file(&out);
        crate::support::run_ok(
            std::process::Command::new("gpg")
                .arg("--homedir")
                .arg(self.home.path())
                .args(["--batch", "--quiet", "--pinentry-mode", "loopback"])
                .args(["--passphrase", "", "--clearsign", "--output"])
                .arg(&out)
                .arg(&input),
        );
        std::fs::read(out).unwrap()
    }
}

/// The real trixie Release text (signature checked) and its Packages.gz.
async fn real_release_and_packages_gz() -> (String, Vec<u8>) {
    let (archive, _) = discovered();
    let real = real_inrelease(&archive, "trixie").await;
    let text = release::verify_inrelease(
        &Keyring::load(Path::new(release::DEFAULT_KEYRING)).unwrap(),
        &real,
        "t",
    )
    .unwrap();
    let gz = fetcher(
        Cas::open(tempfile::tempdir().unwrap().keep()).unwrap(),
        false,
    )
    .get(&format!(
        "{archive}/dists/trixie/main/binary-amd64/Packages.gz"
    ))
    .await
    .unwrap_or_else(|e| panic!("mirror unreachable, cannot test: {e}"));
    (text, gz)
}

/// Load trixie from a 127.0.0.1 repository serving `release` (signed by a throwaway key that is
/// the only trusted one) and the real Packages.gz; also returns every request path it saw.
async fn load_signed(
    release: &str,
    gz: Vec<u8>,
) -> (Result<repo::RepoIndexes, RepoError>, Vec<String>) {
    let signer = Signer::new();
    let files = HashMap::from([
        (
            "/debian/dists/trixie/InRelease".to_string(),
            signer.inrelease(release),
        ),
        (
            "/debian/dists/trixie/main/binary-amd64/Packages.gz".to_string(),
            gz,
        ),
    ]);
    let srv = serve(files, None);
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(Cas::open(dir.path()).unwrap(), false);
    let spec = RepoSpec {
        keyring: Some(signer.keyring()),
        ..spec("trixie", local_mirror(&srv.base), false, false)
    };
    let result = repo::load(&spec, &f).await;
    let seen = srv.paths.lock().unwrap().clone();
    (result, seen)
}

/// A Release that lists no Packages.xz (an older or trimmed mirror): the index is read from the
/// listed Packages.gz and verified against its Release sha256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_gz_is_used_when_the_release_lists_no_packages_xz() {
    let (text, gz) = real_release_and_packages_gz().await;
    let trimmed: String = text
        .lines()
        .filter(|l| !l.contains("/Packages.xz"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(trimmed.contains("main/binary-amd64/Packages.gz"));
    let (result, seen) = load_signed(&trimmed, gz).await;
    let idx = result.unwrap_or_else(|e| panic!("the Packages.gz fallback failed: {e}"));
    let pf = &idx.suites[0].packages[0];
    assert_eq!(pf.path, "main/binary-amd64/Packages.gz");
    let paras = control::parse(&pf.text).unwrap();
    assert!(paras.iter().any(|p| p.get("Package") == Some("bash")));
    assert!(
        seen.iter().any(|p| p.ends_with("/Packages.gz"))
            && !seen.iter().any(|p| p.ends_with("/Packages.xz")),
        "{seen:?}"
    );
}

/// A validly signed Release whose Origin is not Debian is refused, and nothing else is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_release_whose_origin_is_not_debian_is_refused() {
    let (text, gz) = real_release_and_packages_gz().await;
    assert!(
        text.contains("Origin: Debian"),
        "{}",
        &text[..200.min(text.len())]
    );
    let elsewhere = text.replacen("Origin: Debian", "Origin: Elsewhere", 1);
    let (result, seen) = load_signed(&elsewhere, gz).await;
    let err = result.expect_err("a Release from elsewhere was accepted");
    let msg = err.to_string();
    assert!(
        matches!(err, RepoError::Release(ReleaseError::NotDebian { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("Elsewhere") && msg.contains("expected `Debian`"),
        "{msg}"
    );
    assert_eq!(seen.len(), 1, "fetched past the Release");
}
