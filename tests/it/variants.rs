//! The shipped variants: built from the real mirror and tested inside the images (the headline
//! integration test), read back by umoci, with shared layers and reproducible package layers.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use crate::support::*;

/// Build every shipped variant once per test process, every layer fresh by the code under test
/// (a private cache sharing only downloads with the default cache: `support::run_cache`).
fn build_all() -> &'static (tempfile::TempDir, serde_json::Value) {
    static BUILT: std::sync::OnceLock<(tempfile::TempDir, serde_json::Value)> =
        std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        require_root();
        require_bin("bwrap", "bubblewrap");
        let out = tempfile::tempdir().unwrap();
        let _building = run_cache::lock();
        let report = json(&run_ok(
            run_cache::hakim(out.path()).args(["build", "--all", "--json"]),
        ));
        (out, report)
    })
}

fn hakim_out(out: &std::path::Path) -> Command {
    run_cache::hakim(out)
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
fn shipped_layout_and_a_skopeo_copy_of_it_validate_against_the_oci_schemas() {
    let (out, _) = build_all();
    let layout = out.path().join("oci");
    validate_layout(&layout);
    // What a registry or another tool hands back must validate too: skopeo's own copy.
    require_bin("skopeo", "skopeo");
    let copy = tempfile::tempdir().unwrap();
    run_ok(Command::new("skopeo").args([
        "copy",
        "--all",
        &format!("oci:{}:hakim-python:latest", layout.display()),
        &format!("oci:{}:hakim-python:latest", copy.path().display()),
    ]));
    validate_layout(copy.path());
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

/// The `extra` fixture (packages, a locale, `run:` steps, plus accounts merged into the package
/// layer, and `image_mirror:`) built twice from one lock with separate layer caches: once
/// normally, once on a single core and `--offline` with an unreachable mirror (sharing only the
/// first build's downloads).
struct ExtraPair {
    a: Scratch,
    b: Scratch,
}

fn extra_pair() -> &'static ExtraPair {
    static PAIR: std::sync::OnceLock<ExtraPair> = std::sync::OnceLock::new();
    PAIR.get_or_init(|| {
        require_root();
        require_bin("bwrap", "bubblewrap");
        require_bin("taskset", "util-linux");
        let scratch = || {
            let s = Scratch::fixture("debian");
            // File capabilities and a hardlink made inside the sandbox: overlay upper -> layer.
            let extra = s.read("layers/extra/layer.yaml").replace(
                "packages: [file]",
                "packages: [file, iputils-ping, libcap2-bin]",
            ) + "  - name: capabilities and a hardlink\n    script: |\n      setcap cap_net_raw+ep /usr/bin/ping\n      ln /usr/bin/file /usr/local/bin/file-again\n";
            s.write(
                "layers/extra/layer.yaml",
                &format!(
                    "{extra}accounts:\n  groups:\n    - name: team\n      gid: 1500\n  users:\n    - name: dev\n      uid: 1500\n      groups: [team]\n      shell: /bin/bash\n"
                ),
            );
            s.write(
                "variants/anchor.yaml",
                &s.read("variants/anchor.yaml").replace(
                    "  components: [main]\n",
                    "  components: [main]\n  image_mirror: http://apt.example.invalid/debian\n  image_security_mirror: http://apt.example.invalid/debian-security\n",
                ),
            );
            s
        };
        let (a, b) = (scratch(), scratch());
        run_ok(a.hakim().args(["lock", "extra"]));
        fs::copy(a.project().join("hakim.lock"), b.project().join("hakim.lock")).unwrap();
        run_ok(a.hakim().args(["build", "extra"]));
        fs::create_dir_all(b.cache()).unwrap();
        std::os::unix::fs::symlink(a.cache().join("blobs"), b.cache().join("blobs")).unwrap();
        let mut pinned = Command::new("taskset");
        pinned.args(["-c", "0"]).arg(env!("CARGO_BIN_EXE_hakim"));
        pinned
            .args(b.hakim().get_args())
            .args(["build", "extra", "--offline"]);
        pinned.env_remove("SOURCE_DATE_EPOCH");
        pinned.env("HAKIM_DEBIAN_MIRROR", "http://127.0.0.1:9");
        pinned.env("HAKIM_DEBIAN_SECURITY_MIRROR", "http://127.0.0.1:9");
        run_ok(&mut pinned);
        ExtraPair { a, b }
    })
}

/// Every digest behind `reference` in a layout: the top descriptor (index or manifest), each
/// manifest, its config and each layer.
fn digests(layout: &std::path::Path, reference: &str) -> Vec<String> {
    let blob = |d: &str| -> serde_json::Value {
        let path = layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let top = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == reference)
        .unwrap_or_else(|| panic!("no {reference} in {index}"));
    let mut out = Vec::new();
    let mut todo = vec![top["digest"].as_str().unwrap().to_string()];
    while let Some(d) = todo.pop() {
        let doc = blob(&d);
        out.push(d);
        if let Some(list) = doc["manifests"].as_array() {
            todo.extend(
                list.iter()
                    .map(|m| m["digest"].as_str().unwrap().to_string()),
            );
        } else {
            out.push(doc["config"]["digest"].as_str().unwrap().to_string());
            for l in doc["layers"].as_array().unwrap() {
                out.push(l["digest"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

#[test]
fn package_layers_are_reproducible_across_caches_and_core_counts() {
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(
        cores >= 2,
        "this test compares a build on {cores} core(s) with one on a single core: it needs 2 or more"
    );
    let one = run_ok(Command::new("taskset").args(["-c", "0", "nproc"]));
    assert_eq!(String::from_utf8_lossy(&one.stdout).trim(), "1");
    let p = extra_pair();
    let da = digests(&p.a.layout(), "test-extra:latest");
    let db = digests(&p.b.layout(), "test-extra:latest");
    assert!(
        da.len() >= 4,
        "manifest, config and at least two layers: {da:?}"
    );
    assert_eq!(da, db, "a single-core build in another cache differs");
    // Package-layer layouts are valid against the OCI schemas too.
    validate_layout(&p.a.layout());
}

#[test]
fn run_steps_locales_and_accounts_work_in_package_layers() {
    let s = &extra_pair().a;
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

    let sources = fs::read_to_string(root.join("etc/apt/sources.list.d/debian.sources")).unwrap();
    assert!(
        sources.contains("URIs: http://apt.example.invalid/debian\n"),
        "image_mirror is what the image's apt uses: {sources}"
    );
    require_bin("getcap", "libcap2-bin");
    let caps = run_ok(Command::new("getcap").arg(root.join("usr/bin/ping")));
    assert!(
        String::from_utf8_lossy(&caps.stdout).contains("cap_net_raw"),
        "file capability lost between the sandbox and the layer: {caps:?}"
    );
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        fs::metadata(root.join("usr/bin/file")).unwrap(),
        fs::metadata(root.join("usr/local/bin/file-again")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hardlink became a copy");
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("dev:x:1500:1500:"), "{passwd}");
    assert!(
        passwd.contains("root:x:0:0:"),
        "dpkg's accounts kept: {passwd}"
    );

    // A failing step names the layer and the step, and the layout is left alone. (A copy of the
    // project sharing the pair's cache, so only the failing layer is built again.)
    let s = {
        let c = Scratch::fixture("debian");
        fs::remove_dir_all(c.project()).unwrap();
        copy_dir(&s.project(), &c.project());
        copy_dir(&s.out(), &c.out());
        std::os::unix::fs::symlink(s.cache(), c.cache()).unwrap();
        c
    };
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
