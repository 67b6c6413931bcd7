//! `--cache-from` / `--cache-to`: a layer cache in a real docker-registry, shared by jobs that
//! share no disk. Job A writes every layer; job B, on an empty cache dir, builds none of them
//! and gets the same digests; a corrupt, missing or unreachable cache only costs a rebuild.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use crate::support::proxy::Proxy;
use crate::support::registry::{TestRegistry, free_port};
use crate::support::*;
use serde_json::Value;

/// The layer the build derives from `config.env_file`: tiny, never cached anywhere.
const ENV_FILE_LAYER: &str = "config.env_file";

/// `(variant, arch, layer) → (source, digest)` of a `build --json` report.
fn layers(report: &Value) -> BTreeMap<(String, String, String), (String, String)> {
    let mut out = BTreeMap::new();
    for v in report["variants"].as_array().unwrap() {
        for a in v["archs"].as_array().unwrap() {
            for l in a["layers"].as_array().unwrap() {
                let name = l["name"].as_str().unwrap().to_string();
                if name == ENV_FILE_LAYER {
                    continue;
                }
                out.insert(
                    (
                        v["variant"].as_str().unwrap().to_string(),
                        a["arch"].as_str().unwrap().to_string(),
                        name,
                    ),
                    (
                        l["source"].as_str().unwrap().to_string(),
                        l["digest"].as_str().unwrap().to_string(),
                    ),
                );
            }
        }
    }
    out
}

/// `variant → digest` of every built variant.
fn digests(report: &Value) -> BTreeMap<String, String> {
    report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["variant"].as_str().unwrap().to_string(),
                v["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn sources(report: &Value) -> BTreeSet<String> {
    layers(report).into_values().map(|(s, _)| s).collect()
}

fn cache_states(report: &Value) -> Vec<String> {
    report["cache_to"]
        .as_array()
        .unwrap_or_else(|| panic!("no cache_to in {report}"))
        .iter()
        .map(|w| w["state"].as_str().unwrap().to_string())
        .collect()
}

/// Distinct layer cache keys of a report.
fn keys(report: &Value) -> BTreeSet<String> {
    report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["archs"].as_array().unwrap())
        .flat_map(|a| a["layers"].as_array().unwrap())
        .filter(|l| l["name"] != ENV_FILE_LAYER)
        .map(|l| l["key"].as_str().unwrap().to_string())
        .collect()
}

fn build(s: &Scratch, extra: &[&str]) -> Value {
    json(&run_ok(
        s.hakim().args(["build", "--all", "--json"]).args(extra),
    ))
}

/// Whether the file holds exactly the bytes of `digest`.
fn hashes_to(path: &Path, digest: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    hakim::digest::Sha256Digest::of(&bytes).oci() == digest
}

#[test]
fn a_job_on_an_empty_cache_takes_every_layer_from_the_registry_cache() {
    let reg = TestRegistry::open();
    let proxy = Proxy::new(reg.addr);
    let cache = format!("{}/team/hakim-cache", proxy.host());

    let a = Scratch::fixture("basic");
    let built_a = build(&a, &["--cache-to", &cache]);
    assert_eq!(sources(&built_a), ["built".to_string()].into(), "{built_a}");
    let states = cache_states(&built_a);
    assert_eq!(
        states.len(),
        keys(&built_a).len(),
        "one entry per layer key"
    );
    assert!(states.iter().all(|s| s == "pushed"), "{built_a}");

    // Written once: a second run finds every entry there and uploads nothing.
    let uploads = proxy.log().iter().filter(|l| l.is_blob_upload()).count();
    let again = build(&a, &["--cache-to", &cache]);
    assert!(
        cache_states(&again).iter().all(|s| s == "present"),
        "{again}"
    );
    let log = proxy.log();
    assert_eq!(log.iter().filter(|l| l.is_blob_upload()).count(), uploads);

    // Job B: another checkout, an empty cache dir, only the registry in common.
    let b = Scratch::fixture("basic");
    let reads_from = log.len();
    let built_b = build(&b, &["--cache-from", &cache]);
    assert_eq!(
        sources(&built_b),
        ["remote".to_string()].into(),
        "{built_b}"
    );
    assert_eq!(digests(&built_b), digests(&built_a));
    let layers_b = layers(&built_b);
    assert_eq!(layers_b.len(), layers(&built_a).len());
    for (at, (_, digest)) in &layers_b {
        assert_eq!(layers(&built_a)[at].1, *digest, "{at:?}");
        let blob = b.cache().join("blobs/sha256").join(&digest[7..]);
        assert!(
            hashes_to(&blob, digest),
            "{} is not {digest}",
            blob.display()
        );
    }
    let writes = proxy.log()[reads_from..]
        .iter()
        .filter(|l| l.method != "GET" && l.method != "HEAD")
        .map(|l| format!("{} {}", l.method, l.path))
        .collect::<Vec<_>>();
    assert!(writes.is_empty(), "--cache-from wrote: {writes:?}");
    crate::support::validate_layout(&b.layout());

    // What B took is in its own layer cache now: offline, nothing is built or fetched.
    let offline = build(&b, &["--offline"]);
    assert_eq!(sources(&offline), ["local".to_string()].into(), "{offline}");
    assert_eq!(digests(&offline), digests(&built_a));

    // `push` takes the same flags and says where each layer came from.
    let c = Scratch::fixture("basic");
    let out = run_ok(c.hakim().args([
        "push",
        "base",
        "--registry",
        &format!("{}/team", proxy.host()),
        "--cache-from",
        &cache,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("from the registry cache") && !stderr.contains(" built\n"),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_or_missing_cache_entry_is_rebuilt_never_used() {
    let reg = TestRegistry::open();
    let cache = format!("{}/team/hakim-cache", reg.host());
    let a = Scratch::fixture("basic");
    let built_a = build(&a, &["--cache-to", &cache]);
    let layers_a = layers(&built_a);
    let at = |layer: &str| ("base".to_string(), "amd64".to_string(), layer.to_string());
    let files = layers_a[&at("files")].1.clone();
    let users = layers_a[&at("users")].1.clone();
    assert_ne!(files, users);

    // Same size, one byte flipped, behind the registry's back: it serves it as it is.
    let data = reg.blob_data(&files[7..]);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    // And one entry loses its layer blob the way a registry's garbage collection would.
    let url = format!("http://{}/v2/team/hakim-cache/blobs/{users}", reg.host());
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            &url,
        ])
        .output()
        .expect("curl missing: install curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "202", "{out:?}");

    let b = Scratch::fixture("basic");
    let built_b = build(&b, &["--cache-from", &cache]);
    let layers_b = layers(&built_b);
    assert_eq!(layers_b[&at("files")].0, "built", "{built_b}");
    assert_eq!(layers_b[&at("users")].0, "built", "{built_b}");
    assert_eq!(
        layers_b[&("app".to_string(), "amd64".to_string(), "tool".to_string())].0,
        "remote",
        "{built_b}"
    );
    // The image is still exactly job A's.
    assert_eq!(digests(&built_b), digests(&built_a));
    let warnings = built_b["warnings"].to_string();
    assert!(
        warnings.contains("layer files") && warnings.contains("layer users"),
        "{warnings}"
    );
    assert!(
        warnings.contains(&files[7..]),
        "names the bad blob: {warnings}"
    );
    // Nothing bad was kept: every blob B holds is what its name says.
    for e in std::fs::read_dir(b.cache().join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.len() == 64 {
            assert!(hashes_to(&p, &format!("sha256:{name}")), "{}", p.display());
        }
    }
    crate::support::validate_layout(&b.layout());
}

#[test]
fn an_unreachable_cache_registry_only_warns() {
    let down = format!("127.0.0.1:{}/team/hakim-cache", free_port());
    let s = Scratch::fixture("basic");
    let built = build(&s, &["--cache-from", &down, "--cache-to", &down]);
    assert_eq!(sources(&built), ["built".to_string()].into(), "{built}");
    assert!(
        cache_states(&built).iter().all(|s| s == "failed"),
        "{built}"
    );
    let warnings = built["warnings"].as_array().unwrap();
    assert!(!warnings.is_empty());
    assert!(
        warnings.iter().all(|w| w
            .as_str()
            .unwrap()
            .contains(&down[..down.find('/').unwrap()])),
        "every warning names the registry: {warnings:?}"
    );
    let plain = build(&Scratch::fixture("basic"), &[]);
    assert_eq!(digests(&built), digests(&plain));
}

#[test]
fn shipped_base_and_tooling_come_from_the_registry_cache_on_an_empty_machine() {
    require_root();
    require_bin("bwrap", "bubblewrap");
    let reg = TestRegistry::open();
    let cache = format!("{}/ci/hakim-cache", reg.host());
    // Job A: the suite's own build of the shipped variants, then their layers to the cache.
    let out_a = tempfile::tempdir().unwrap();
    let built_a = {
        let _building = run_cache::lock();
        json(&run_ok(run_cache::hakim(out_a.path()).args([
            "build",
            "base",
            "tooling",
            "--json",
            "--cache-to",
            &cache,
        ])))
    };
    assert!(
        cache_states(&built_a).iter().all(|s| s == "pushed"),
        "{built_a}"
    );
    // Job B: nothing but the checkout and the registry.
    let empty = tempfile::tempdir().unwrap();
    let built_b = json(&run_ok(
        Command::new(env!("CARGO_BIN_EXE_hakim"))
            .arg("--project")
            .arg(repo_root())
            .arg("--cache-dir")
            .arg(empty.path().join("cache"))
            .arg("--out")
            .arg(empty.path().join("out"))
            .env_remove("SOURCE_DATE_EPOCH")
            .args(["build", "base", "tooling", "--json", "--cache-from", &cache]),
    ));
    // Each layer key is taken from the registry once; variants sharing it reuse it locally.
    assert!(!sources(&built_b).contains("built"), "{built_b}");
    let remote = layers(&built_b)
        .values()
        .filter(|(s, _)| s == "remote")
        .count();
    assert_eq!(remote, keys(&built_b).len(), "{built_b}");
    assert_eq!(digests(&built_b), digests(&built_a));
    // No package was downloaded: B installed nothing (a .deb is an `ar` archive).
    let debs = blobs_starting_with(&empty.path().join("cache/blobs/sha256"), b"!<arch>\n");
    assert_eq!(debs, Vec::<String>::new(), "job B downloaded .debs");
}

/// Names of the blobs in `dir` whose content starts with `magic`.
fn blobs_starting_with(dir: &Path, magic: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let mut head = vec![0; magic.len()];
        let mut f = std::fs::File::open(e.path()).unwrap();
        if std::io::Read::read_exact(&mut f, &mut head).is_ok() && head == magic {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}
