//! The shipped variants: built from the real mirror and tested inside the images (the headline
//! integration test), read back by umoci, with shared layers and reproducible package layers.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use crate::support::*;

/// Build every shipped variant once per test process; the download and layer caches are the
/// user's default cache, so CI reuses them between runs.
fn build_all() -> &'static (tempfile::TempDir, serde_json::Value) {
    static BUILT: std::sync::OnceLock<(tempfile::TempDir, serde_json::Value)> =
        std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        require_root();
        require_bin("bwrap", "bubblewrap");
        let out = tempfile::tempdir().unwrap();
        let report = json(&run_ok(
            Command::new(env!("CARGO_BIN_EXE_hakim"))
                .arg("--project")
                .arg(repo_root())
                .arg("--out")
                .arg(out.path())
                .args(["build", "--all", "--json"]),
        ));
        (out, report)
    })
}

fn hakim_out(out: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hakim"));
    c.arg("--project").arg(repo_root()).arg("--out").arg(out);
    c
}

#[test]
fn every_shipped_variant_builds_and_passes_its_tests() {
    let (out, report) = build_all();
    let variants: Vec<&str> = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["variant"].as_str().unwrap())
        .collect();
    for v in ["base", "tooling", "js", "rust", "elixir", "php", "python"] {
        assert!(variants.contains(&v), "{v} not built: {variants:?}");
    }
    let res = hakim_out(out.path())
        .args(["test", "--all", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "hakim test failed:\n{text}\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let results = serde_json::from_slice::<serde_json::Value>(&res.stdout).unwrap();
    assert_eq!(results["passed"], true);
    let n: usize = results["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["tests"].as_array().unwrap().len())
        .sum();
    assert!(
        n >= 20,
        "expected every variant's tests to run, saw {n}: {text}"
    );
}

#[test]
fn base_and_tooling_layers_are_shared_by_every_language_variant() {
    let (_, report) = build_all();
    let layers = |v: &str| -> BTreeMap<String, String> {
        let var = report["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["variant"] == v)
            .unwrap();
        var["archs"][0]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_string(),
                    l["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let tooling = layers("tooling");
    for v in ["js", "rust", "elixir", "php", "python"] {
        let l = layers(v);
        assert_eq!(l["base"], tooling["base"], "{v}: base layer differs");
        assert_eq!(
            l["tooling"], tooling["tooling"],
            "{v}: tooling layer differs"
        );
        assert_eq!(
            l["entrypoint"], tooling["entrypoint"],
            "{v}: entrypoint layer differs"
        );
        assert_eq!(
            l["config.env_file"], tooling["config.env_file"],
            "{v}: the image env layer differs"
        );
    }
    assert_eq!(layers("base")["base"], tooling["base"]);
}

#[test]
fn base_image_has_a_complete_dpkg_database_as_read_by_umoci() {
    let (out, _) = build_all();
    let root = umoci_unpack(
        &out.path().join("oci"),
        "hakim-base:latest",
        &out.path().join("base-bundle"),
    );
    let audit = run_ok(Command::new("chroot").arg(&root).args(["dpkg", "--audit"]));
    assert!(
        audit.stdout.is_empty(),
        "dpkg --audit: {}",
        String::from_utf8_lossy(&audit.stdout)
    );
    let listed = run_ok(Command::new("chroot").arg(&root).args([
        "dpkg-query",
        "-W",
        "-f",
        "${db:Status-Abbrev} ${Package} ${Version}\n",
    ]));
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let lock: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo_root().join("hakim.lock")).unwrap()).unwrap();
    let base = lock["layers"]["base@amd64"]["packages"].as_array().unwrap();
    assert!(base.len() > 150);
    for p in base {
        let line = format!(
            "ii  {} {}",
            p["name"].as_str().unwrap(),
            p["version"].as_str().unwrap()
        );
        assert!(
            listed.lines().any(|l| l == line),
            "locked {line} is not installed:\n{listed}"
        );
    }
    // Cleaned before sealing.
    assert!(
        fs::read_dir(root.join("etc/ssh"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("ssh_host_"))
    );
    assert_eq!(fs::metadata(root.join("etc/machine-id")).unwrap().len(), 0);
    assert!(!root.join("var/cache/ldconfig/aux-cache").exists());
    assert!(
        fs::read_dir(root.join("var/lib/apt/lists"))
            .unwrap()
            .flatten()
            .all(|e| e.path().is_dir())
    );
    assert!(
        !root.join("usr/sbin/policy-rc.d").exists(),
        "build-time policy-rc.d must not ship"
    );
    assert!(root.join("etc/apt/sources.list.d/debian.sources").is_file());
}

#[test]
fn package_layers_are_reproducible() {
    require_root();
    let a = Scratch::fixture("debian");
    run_ok(a.hakim().args(["lock", "anchor"]));
    let b = Scratch::fixture("debian");
    fs::copy(
        a.project().join("hakim.lock"),
        b.project().join("hakim.lock"),
    )
    .unwrap();
    let ja = json(&run_ok(a.hakim().args(["build", "anchor", "--json"])));
    let jb = json(&run_ok(b.hakim().args(["build", "anchor", "--json"])));
    assert_eq!(
        ja["variants"][0]["digest"], jb["variants"][0]["digest"],
        "two builds of the same lock differ"
    );
    assert_eq!(ja["variants"][0]["archs"][0]["layers"][0]["cached"], false);
    assert_eq!(jb["variants"][0]["archs"][0]["layers"][0]["cached"], false);
}

#[test]
fn run_steps_and_locales_work_in_package_layers() {
    require_root();
    let s = Scratch::fixture("debian");
    run_ok(s.hakim().args(["build", "extra"]));
    let root = umoci_unpack(
        &s.layout(),
        "test-extra:latest",
        &s.dir.path().join("bundle"),
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/hakim-run-marker")).unwrap(),
        "offline\n",
        "the offline step saw no network"
    );
    assert!(
        !root.join("etc/motd").exists(),
        "a file deleted by a run step is whited out"
    );
    let locales = run_ok(Command::new("chroot").arg(&root).args(["locale", "-a"]));
    assert!(
        String::from_utf8_lossy(&locales.stdout)
            .lines()
            .any(|l| l == "de_DE.utf8")
    );
    let status = run_ok(Command::new("chroot").arg(&root).args([
        "dpkg-query",
        "-W",
        "-f",
        "${db:Status-Abbrev}",
        "file",
    ]));
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "ii");

    // A failing step names the layer and the step, and the layout is left alone.
    let before = fs::read(s.layout().join("index.json")).unwrap();
    s.write(
        "layers/extra/layer.yaml",
        &s.read("layers/extra/layer.yaml")
            .replace("test \"$(grep -c ':' /proc/net/dev)\" -gt 1", "exit 7"),
    );
    let err = run_err(s.hakim().args(["build", "extra"]));
    assert!(
        err.contains("layer `extra`")
            && err.contains("networked step")
            && err.contains("exit status: 7"),
        "{err}"
    );
    assert_eq!(fs::read(s.layout().join("index.json")).unwrap(), before);
}
