//! `hakim build` end to end on fixture projects, read back by skopeo and umoci.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use crate::support::*;

fn mode(p: &std::path::Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn owner(p: &std::path::Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn layout_is_read_by_skopeo_and_umoci_with_declared_metadata() {
    require_root();
    let s = Scratch::fixture("basic");
    run_ok(s.hakim().arg("build"));
    let layout = s.layout();

    let cfg = skopeo_inspect(&layout, "test-base:latest", &["--config"]);
    let c = &cfg["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/local/bin/hello"]));
    assert_eq!(c["Cmd"], serde_json::json!(["--greet"]));
    assert_eq!(c["User"], "coder");
    assert_eq!(c["WorkingDir"], "/home/coder");
    assert_eq!(c["StopSignal"], "SIGTERM");
    assert_eq!(c["Env"], serde_json::json!(["LANG=C.UTF-8"]));
    assert!(c["Volumes"]["/home/coder"].is_object());
    assert_eq!(c["Labels"]["com.example.fixture"], "yes");
    assert_eq!(cfg["created"], "1970-01-01T00:00:00Z");
    let history: Vec<String> = cfg["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["created_by"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(history, vec!["hakim layer files", "hakim layer users"]);
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

    let raw = skopeo_inspect(&layout, "test-base:1.0", &["--raw"]);
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let ann = &raw["annotations"];
    assert_eq!(ann["org.opencontainers.image.title"], "test-base");
    assert_eq!(
        ann["org.opencontainers.image.created"],
        "1970-01-01T00:00:00Z"
    );
    assert_eq!(ann["org.opencontainers.image.version"], "latest");

    let root = umoci_unpack(&layout, "test-base:latest", &s.dir.path().join("bundle"));
    assert_eq!(
        fs::read_to_string(root.join("etc/motd")).unwrap(),
        "Welcome to the fixture\n"
    );
    assert_eq!(
        (mode(&root.join("etc/motd")), owner(&root.join("etc/motd"))),
        (0o644, (0, 0))
    );
    assert_eq!(
        mode(&root.join("usr/local/bin/hello")),
        0o755,
        "exec bit from the source is kept"
    );
    assert_eq!(mode(&root.join("etc/app/app.conf")), 0o600);
    assert_eq!(mode(&root.join("var/lib/app")), 0o700);
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    assert_eq!(
        fs::read_link(root.join("usr/bin/hi"))
            .unwrap()
            .to_str()
            .unwrap(),
        "../local/bin/hello"
    );
    assert_eq!(
        (
            mode(&root.join("home/coder")),
            owner(&root.join("home/coder"))
        ),
        (0o750, (1000, 1000))
    );
    assert_eq!(owner(&root.join("home/coder/work")), (1000, 1000));
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("coder:x:1000:1000::/home/coder:/bin/sh\n"),
        "{passwd}"
    );
    let group = fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.contains("docker:x:999:coder\n"), "{group}");
    let shadow = fs::read_to_string(root.join("etc/shadow")).unwrap();
    assert!(
        shadow.contains("coder:!:"),
        "password must be locked: {shadow}"
    );
    assert_eq!(mode(&root.join("etc/shadow")), 0o640);

    // The multi-arch variant is an image index with one manifest per arch, and zstd layers.
    let idx = skopeo_inspect(&layout, "test-app:latest", &["--raw"]);
    assert_eq!(idx["mediaType"], "application/vnd.oci.image.index.v1+json");
    let archs: Vec<&str> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, vec!["amd64", "arm64"]);
    for arch in ["amd64", "arm64"] {
        let m = skopeo_inspect(&layout, "test-app:latest", &["--override-arch", arch]);
        assert_eq!(m["Architecture"], arch);
        let entry = idx["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap();
        let hex = entry["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
                .unwrap();
        assert!(
            manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"),
            "{manifest}"
        );
        // umoci cannot read zstd layers; skopeo decompresses them (proving they are valid) into gzip.
        let dest = s.dir.path().join(format!("single-{arch}"));
        run_ok(
            Command::new("skopeo")
                .args([
                    "copy",
                    "--dest-compress-format",
                    "gzip",
                    "--dest-compress",
                    "--override-arch",
                    arch,
                ])
                .arg(format!("oci:{}:test-app:latest", layout.display()))
                .arg(format!("oci:{}:x", dest.display())),
        );
        let r = umoci_unpack(&dest, "x", &s.dir.path().join(format!("bundle-{arch}")));
        assert_eq!(
            fs::read_to_string(r.join("opt/tool/bin/tool")).unwrap(),
            "#!/bin/sh\necho tool\n"
        );
        assert_eq!(
            owner(&r.join("opt/tool/bin/tool")),
            (0, 0),
            "archive owners are replaced by the declared owner"
        );
        assert_eq!(mode(&r.join("opt/tool/bin/tool")), 0o755);
        assert_eq!(
            fs::read_link(r.join("usr/local/bin/tool"))
                .unwrap()
                .to_str()
                .unwrap(),
            "/opt/tool/bin/tool"
        );
    }
    validate_layout(&layout);

    // The oci-spec crate's typed model reads every document too.
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = oci_spec::image::ImageIndex::from_file(layout.join("index.json")).unwrap();
    for d in index.manifests() {
        if d.media_type() == &oci_spec::image::MediaType::ImageIndex {
            let inner = oci_spec::image::ImageIndex::from_file(blob(d.digest().as_ref())).unwrap();
            assert_eq!(inner.manifests().len(), 2);
            continue;
        }
        let m = oci_spec::image::ImageManifest::from_file(blob(d.digest().as_ref())).unwrap();
        let c = oci_spec::image::ImageConfiguration::from_file(blob(m.config().digest().as_ref()))
            .unwrap();
        assert_eq!(c.rootfs().diff_ids().len(), m.layers().len());
    }
}

#[test]
fn builds_are_reproducible_across_paths_caches_and_mtimes() {
    let a = Scratch::fixture("basic");
    let b = Scratch::fixture("basic");
    // Different checkout times must not matter.
    let f = b.project().join("layers/files/rootfs/etc/motd");
    filetime::set_file_mtime(&f, filetime::FileTime::from_unix_time(2_000_000_000, 0)).unwrap();
    let ja = json(&run_ok(
        a.hakim()
            .args(["build", "--json"])
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    ));
    let jb = json(&run_ok(
        b.hakim()
            .args(["build", "--json"])
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    ));
    let strip = |mut v: serde_json::Value| {
        v.as_object_mut().unwrap().remove("layout");
        v
    };
    assert_eq!(
        strip(ja.clone()),
        strip(jb),
        "digests differ between two clean builds"
    );
    // And SOURCE_DATE_EPOCH is really an input.
    let c = Scratch::fixture("basic");
    let jc = json(&run_ok(
        c.hakim()
            .args(["build", "--json"])
            .env("SOURCE_DATE_EPOCH", "1700000001"),
    ));
    assert_ne!(ja["variants"][0]["digest"], jc["variants"][0]["digest"]);
}

#[test]
fn unchanged_rebuild_uses_the_cache_and_a_change_rebuilds_only_from_there() {
    let s = Scratch::fixture("basic");
    let first = json(&run_ok(s.hakim().args(["build", "base", "--json"])));
    let layers = &first["variants"][0]["archs"][0]["layers"];
    assert!(
        layers
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["cached"] == false)
    );
    let again = json(&run_ok(s.hakim().args(["build", "base", "--json"])));
    let l2 = &again["variants"][0]["archs"][0]["layers"];
    assert!(
        l2.as_array().unwrap().iter().all(|l| l["cached"] == true),
        "{l2}"
    );
    assert_eq!(
        first["variants"][0]["digest"],
        again["variants"][0]["digest"]
    );

    // Changing the top layer's inputs rebuilds only that layer.
    let yaml = s
        .read("layers/users/layer.yaml")
        .replace("mode: \"0755\"", "mode: \"0700\"");
    s.write("layers/users/layer.yaml", &yaml);
    let third = json(&run_ok(s.hakim().args(["build", "base", "--json"])));
    let l3 = third["variants"][0]["archs"][0]["layers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        (l3[0]["cached"].clone(), l3[1]["cached"].clone()),
        (serde_json::json!(true), serde_json::json!(false))
    );
    assert_eq!(l3[0]["digest"], layers[0]["digest"]);
    assert_ne!(l3[1]["digest"], layers[1]["digest"]);
}

#[test]
fn inspect_shows_cache_state_and_config() {
    let s = Scratch::fixture("basic");
    let before = json(&run_ok(
        s.hakim()
            .args(["inspect", "app", "--json", "--arch", "arm64"]),
    ));
    assert_eq!(before["name"], "test-app");
    assert_eq!(before["archs"], serde_json::json!(["amd64", "arm64"]));
    let names: Vec<&str> = before["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["files", "users", "tool"]);
    assert!(
        before["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["cached"] == false && l["digest"].is_null())
    );
    assert_eq!(before["config"]["env"]["TOOL_HOME"], "/opt/tool");
    assert_eq!(
        before["config"]["env"]["LANG"], "C.UTF-8",
        "env is inherited through from:"
    );

    let built = json(&run_ok(s.hakim().args(["build", "app", "--json"])));
    let after = json(&run_ok(
        s.hakim()
            .args(["inspect", "app", "--json", "--arch", "arm64"]),
    ));
    let arm = built["variants"][0]["archs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["arch"] == "arm64")
        .unwrap()
        .clone();
    for (i, l) in after["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(l["cached"], true);
        assert_eq!(l["digest"], arm["layers"][i]["digest"]);
        assert_eq!(l["size"], arm["layers"][i]["size"]);
    }
}

#[test]
fn project_is_found_from_a_subdirectory_and_validate_reports() {
    let s = Scratch::fixture("basic");
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_hakim"))
            .arg("validate")
            .current_dir(s.project().join("layers/files/conf")),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 2 variants, 3 layers"));
    let err = run_err(
        Command::new(env!("CARGO_BIN_EXE_hakim"))
            .arg("validate")
            .current_dir(s.dir.path()),
    );
    assert!(err.contains("no `variants/` directory"), "{err}");
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        h.set_uid(1234);
        h.set_cksum();
        b.append_data(&mut h, name, *body).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hakim::digest::Sha256Digest::of(bytes).hex()
}

#[test]
fn http_archives_are_pinned_per_arch() {
    let amd = tar_gz(&[("t/bin/arch", b"amd64\n")]);
    let arm = tar_gz(&[("t/bin/arch", b"arm64\n")]);
    let server = FileServer::start(vec![
        ("/t-amd64.tar.gz".into(), amd.clone()),
        ("/t-arm64.tar.gz".into(), arm.clone()),
    ]);
    let s = Scratch::fixture("basic");
    s.write(
        "layers/tool/layer.yaml",
        &format!(
            "archives:\n  - url: {}/t-{{arch}}.tar.gz\n    sha256:\n      amd64: {}\n      arm64: {}\n    strip_components: 1\n    dest: /opt/t\n",
            server.url(),
            sha(&amd),
            sha(&arm)
        ),
    );
    run_ok(s.hakim().args(["build", "app"]));
    for (arch, want) in [("amd64", "amd64\n"), ("arm64", "arm64\n")] {
        let dest = s.dir.path().join(format!("c-{arch}"));
        run_ok(
            Command::new("skopeo")
                .args([
                    "copy",
                    "--dest-compress-format",
                    "gzip",
                    "--dest-compress",
                    "--override-arch",
                    arch,
                ])
                .arg(format!("oci:{}:test-app:latest", s.layout().display()))
                .arg(format!("oci:{}:x", dest.display())),
        );
        let r = umoci_unpack(&dest, "x", &s.dir.path().join(format!("b-{arch}")));
        assert_eq!(fs::read_to_string(r.join("opt/t/bin/arch")).unwrap(), want);
    }
    assert_eq!(server.requests.lock().unwrap().len(), 2);

    // A second build with a fresh output dir fetches nothing: the archives are in the cache.
    let out2 = s.dir.path().join("out2");
    run_ok(
        s.hakim()
            .args(["build", "app", "--offline", "--out"])
            .arg(&out2),
    );
    assert_eq!(server.requests.lock().unwrap().len(), 2);

    // A wrong digest is refused, names the URL, and leaves the layout alone.
    let before = fs::read(s.layout().join("index.json")).unwrap();
    let yaml = s
        .read("layers/tool/layer.yaml")
        .replace(&sha(&arm), &sha(b"something else"));
    s.write("layers/tool/layer.yaml", &yaml);
    let err = run_err(s.hakim().args(["build", "app"]));
    assert!(
        err.contains("t-arm64.tar.gz") && err.contains(&sha(b"something else")),
        "{err}"
    );
    assert_eq!(fs::read(s.layout().join("index.json")).unwrap(), before);
}

#[test]
fn bad_inputs_fail_with_located_errors_and_never_touch_the_layout() {
    type Mutation = Box<dyn Fn(&Scratch)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "unknown key",
            Box::new(|s| {
                s.write(
                    "variants/base.yaml",
                    &(s.read("variants/base.yaml") + "colour: red\n"),
                )
            }),
            "unknown field `colour`",
        ),
        (
            "wrong type",
            Box::new(|s| {
                s.write(
                    "variants/app.yaml",
                    &s.read("variants/app.yaml")
                        .replace("archs: [amd64, arm64]", "archs: {x: 1}"),
                )
            }),
            "app.yaml:",
        ),
        (
            "from cycle",
            Box::new(|s| {
                s.write(
                    "variants/base.yaml",
                    &("from: app\n".to_string() + &s.read("variants/base.yaml")),
                )
            }),
            "inheritance cycle",
        ),
        (
            "missing layer",
            Box::new(|s| {
                s.write(
                    "variants/app.yaml",
                    &s.read("variants/app.yaml")
                        .replace("layers: [tool]", "layers: [tool, nope]"),
                )
            }),
            "no layer `nope`",
        ),
        (
            "malformed sha256",
            Box::new(|s| {
                let y = s.read("layers/tool/layer.yaml");
                let line = y
                    .lines()
                    .find(|l| l.contains("sha256:"))
                    .unwrap()
                    .to_string();
                s.write(
                    "layers/tool/layer.yaml",
                    &y.replace(&line, "    sha256: abc123"),
                )
            }),
            "malformed sha256 `abc123`",
        ),
        (
            "duplicate tag",
            Box::new(|s| {
                s.write(
                    "variants/base.yaml",
                    &s.read("variants/base.yaml")
                        .replace("tags: [latest, \"1.0\"]", "tags: [latest, \"1.0\", latest]"),
                )
            }),
            "duplicate tag `latest`",
        ),
        (
            "unknown tag placeholder",
            Box::new(|s| {
                s.write(
                    "variants/base.yaml",
                    &s.read("variants/base.yaml")
                        .replace("\"1.0\"", "\"{branch}\""),
                )
            }),
            "unknown placeholder `{branch}`",
        ),
        (
            "missing file",
            Box::new(|s| {
                s.write(
                    "layers/files/layer.yaml",
                    &s.read("layers/files/layer.yaml")
                        .replace("conf/app.conf", "conf/gone.conf"),
                )
            }),
            "conf/gone.conf does not exist",
        ),
        (
            "relative dest",
            Box::new(|s| {
                s.write(
                    "layers/files/layer.yaml",
                    &s.read("layers/files/layer.yaml")
                        .replace("dest: /etc/app/app.conf", "dest: etc/app.conf"),
                )
            }),
            "must be an absolute path",
        ),
        (
            "unknown arch",
            Box::new(|s| {
                s.write(
                    "variants/app.yaml",
                    &s.read("variants/app.yaml").replace("arm64]", "sparc]"),
                )
            }),
            "unknown architecture `sparc`",
        ),
        (
            "unknown owner",
            Box::new(|s| {
                s.write(
                    "layers/users/layer.yaml",
                    &s.read("layers/users/layer.yaml")
                        .replace("owner: coder:coder", "owner: ghost:coder"),
                )
            }),
            "no user `ghost`",
        ),
        (
            "escaping archive",
            Box::new(|s| {
                let f = s.project().join("layers/tool/evil.tar");
                let mut b = tar::Builder::new(fs::File::create(&f).unwrap());
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_cksum();
                b.append_link(&mut h, "pkg/up", "../../../../etc").unwrap();
                b.finish().unwrap();
                let digest = sha(&fs::read(&f).unwrap());
                s.write("layers/tool/layer.yaml", &format!("archives:\n  - url: evil.tar\n    sha256: {digest}\n    strip_components: 1\n    dest: /opt/evil\n"));
            }),
            "escapes the destination",
        ),
    ];
    for (label, mutate, expected) in cases {
        let s = Scratch::fixture("basic");
        run_ok(s.hakim().arg("build"));
        let index_before = fs::read(s.layout().join("index.json")).unwrap();
        mutate(&s);
        let err = run_err(s.hakim().arg("build"));
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{label}: one error line expected:\n{err}");
        assert!(
            errors[0].contains(expected),
            "{label}: expected `{expected}` in:\n{err}"
        );
        assert_eq!(
            fs::read(s.layout().join("index.json")).unwrap(),
            index_before,
            "{label}: index.json changed"
        );
        let _ = skopeo_inspect(&s.layout(), "test-base:latest", &["--raw"]);
    }
}

#[test]
fn parse_errors_name_file_line_and_column() {
    let s = Scratch::fixture("basic");
    s.write(
        "variants/base.yaml",
        &s.read("variants/base.yaml")
            .replace("  user: coder\n", "  user: coder\n  colour: red\n"),
    );
    let err = run_err(s.hakim().arg("validate"));
    let re = regex::Regex::new(r"variants/base\.yaml:\d+:\d+: .*unknown field `colour`").unwrap();
    assert!(re.is_match(&err), "{err}");
}

#[test]
fn hardlinks_and_file_capabilities_are_kept() {
    require_root();
    require_bin("setcap", "libcap2-bin");
    let s = Scratch::fixture("basic");
    let bin = s.project().join("layers/files/rootfs/usr/local/bin");
    fs::write(bin.join("ping"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(bin.join("ping"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::hard_link(bin.join("ping"), bin.join("ping2")).unwrap();
    run_ok(
        Command::new("setcap")
            .arg("cap_net_raw+ep")
            .arg(bin.join("ping")),
    );
    run_ok(s.hakim().args(["build", "base"]));
    let root = umoci_unpack(
        &s.layout(),
        "test-base:latest",
        &s.dir.path().join("bundle"),
    );
    let a = fs::metadata(root.join("usr/local/bin/ping")).unwrap();
    let b = fs::metadata(root.join("usr/local/bin/ping2")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hardlink kept");
    let caps = run_ok(Command::new("getcap").arg(root.join("usr/local/bin/ping")));
    assert!(
        String::from_utf8_lossy(&caps.stdout).contains("cap_net_raw"),
        "{:?}",
        caps
    );
}

#[test]
fn killed_build_leaves_a_readable_layout() {
    require_bin("skopeo", "skopeo");
    let s = Scratch::fixture("basic");
    run_ok(s.hakim().arg("build"));
    // A server that accepts the request and never answers keeps the build mid-flight.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (_conn, _) = listener.accept().unwrap();
        tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
    });
    s.write(
        "layers/tool/layer.yaml",
        &format!("archives:\n  - url: http://127.0.0.1:{port}/slow.tar.gz\n    sha256: {}\n    dest: /opt/slow\n", sha(b"x")),
    );
    let mut child = s
        .hakim()
        .arg("build")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("build never reached the archive fetch");
    child.kill().unwrap();
    child.wait().unwrap();
    validate_layout(&s.layout());
    let raw = skopeo_inspect(&s.layout(), "test-app:latest", &["--raw"]);
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
}
