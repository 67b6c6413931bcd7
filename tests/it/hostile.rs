//! Hostile and careless inputs (issue 13): account fields, config values, oversized
//! documents, entries under symlinks, archive hardlinks and corrupted layer caches. Every
//! bad input fails with file:line:col and field and leaves the layout as it was; whatever
//! is accepted is read back by umoci, tar and skopeo.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// The layout, if the build got as far as creating it, has no refs.
fn assert_no_refs(s: &Scratch) {
    if let Ok(bytes) = fs::read(s.layout().join("index.json")) {
        let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            index["manifests"],
            serde_json::json!([]),
            "refs were written"
        );
    }
}

/// `hakim validate` and `hakim build` both refuse; the error matches `re`; no layout appears.
fn refused(s: &Scratch, re: &str) -> String {
    let re = regex::Regex::new(re).unwrap();
    let err = run_err(s.hakim().arg("validate"));
    assert!(re.is_match(&err), "validate: {re} not in:\n{err}");
    let err = run_err(s.hakim().arg("build"));
    assert!(re.is_match(&err), "build: {re} not in:\n{err}");
    assert!(
        !s.layout().join("index.json").exists(),
        "a layout was written"
    );
    err
}

const USERS: &str = "layers/users/layer.yaml";

#[test]
fn account_fields_that_would_inject_database_lines_are_refused() {
    let cases = [
        (
            r#"shell: "/bin/sh\nx::0:0::/:/bin/sh""#,
            "users\\[0\\]\\.shell",
            "'\\\\n'",
        ),
        (r#"shell: bin/sh"#, "users\\[0\\]\\.shell", "absolute"),
        (r#"comment: "a:b:c""#, "users\\[0\\]\\.comment", "':'"),
        (
            r#"comment: "x\u0000y""#,
            "users\\[0\\]\\.comment",
            "'\\\\0'",
        ),
        (r#"home: "/home/x:y""#, "users\\[0\\]\\.home", "':'"),
        (r#"home: home/coder"#, "users\\[0\\]\\.home", "absolute"),
    ];
    for (line, field, why) in cases {
        let s = Scratch::fixture("basic");
        s.write(
            USERS,
            &s.read(USERS)
                .replace("      shell: /bin/sh\n", &format!("      {line}\n")),
        );
        refused(
            &s,
            &format!(r"layers/users/layer\.yaml:\d+:\d+: field `accounts\.{field}`: .*{why}"),
        );
    }
    for (from, to, field) in [
        (
            "    - name: coder\n",
            "    - name: \"..\"\n",
            "users\\[0\\]\\.name",
        ),
        (
            "    - name: coder\n",
            "    - name: \"-o\"\n",
            "users\\[0\\]\\.name",
        ),
        (
            "    - name: coder\n",
            "    - name: Coder\n",
            "users\\[0\\]\\.name",
        ),
        (
            "    - name: docker\n",
            "    - name: \"dock:er\"\n",
            "groups\\[0\\]\\.name",
        ),
        (
            "groups: [docker]",
            "groups: [\"docker\\nroot\"]",
            "users\\[0\\]\\.groups\\[0\\]",
        ),
    ] {
        let s = Scratch::fixture("basic");
        s.write(USERS, &s.read(USERS).replace(from, to));
        refused(
            &s,
            &format!(
                r"layers/users/layer\.yaml:\d+:\d+: field `accounts\.{field}`: .*NAME_REGEX|\^\[a-z_\]"
            ),
        );
    }
}

#[test]
fn config_values_are_validated_with_their_position() {
    let base = "variants/base.yaml";
    let cases: [(&str, &str, &str); 6] = [
        (
            "    LANG: C.UTF-8\n",
            "    LANG: C.UTF-8\n    \"A=B\": x\n",
            r"config\.env\.A=B`: .*must be non-empty and contain no `=`",
        ),
        (
            "    LANG: C.UTF-8\n",
            "    LANG: C.UTF-8\n    \"\": x\n",
            r"config\.env\.`: .*must be non-empty",
        ),
        (
            "  stop_signal: SIGTERM\n",
            "  stop_signal: SIGFOO\n",
            r"config\.stop_signal`: `SIGFOO` is not a signal",
        ),
        (
            "  stop_signal: SIGTERM\n",
            "  stop_signal: TERM\n",
            r"config\.stop_signal`: `TERM` is not a signal",
        ),
        (
            "  workdir: /home/coder\n",
            "  workdir: home/coder\n",
            r"config\.workdir`: `home/coder` must be an absolute path",
        ),
        (
            "  volumes: [/home/coder]\n",
            "  volumes: [data]\n",
            r"config\.volumes\[0\]`: `data` must be an absolute path",
        ),
    ];
    for (from, to, why) in cases {
        let s = Scratch::fixture("basic");
        let text = s.read(base);
        assert!(text.contains(from), "fixture changed: {from}");
        s.write(base, &text.replace(from, to));
        refused(&s, &format!(r"variants/base\.yaml:\d+:\d+: field `{why}"));
    }
}

#[test]
fn layer_values_and_empty_variants_are_refused() {
    let files = "layers/files/layer.yaml";
    let s = Scratch::fixture("basic");
    s.write(
        files,
        &s.read(files).replace("  - path: /tmp\n", "  - path: /\n"),
    );
    refused(
        &s,
        r"layers/files/layer\.yaml:\d+:\d+: field `directories\[1\]\.path`: `/` is the image root",
    );

    let s = Scratch::fixture("basic");
    s.write(
        files,
        &s.read(files)
            .replace("    mode: \"0600\"\n", "    mode: 0600\n"),
    );
    refused(
        &s,
        r#"layers/files/layer\.yaml:\d+:\d+: .*quote it: mode: "0600""#,
    );

    let s = Scratch::fixture("basic");
    s.write(
        "variants/empty.yaml",
        "name: test-empty\ndescription: nothing\n",
    );
    refused(
        &s,
        r"variants/empty\.yaml: field `layers`: a variant needs at least one layer",
    );
}

#[test]
fn source_date_epoch_beyond_what_dates_express_is_refused() {
    let s = Scratch::fixture("basic");
    let out = s
        .hakim()
        .args(["build", "base"])
        .env("SOURCE_DATE_EPOCH", "253402300800")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("after 9999-12-31T23:59:59Z"), "{err}");
    assert!(!s.layout().exists());
    // The last second that a date can express still builds, and says so in `created`.
    run_ok(
        s.hakim()
            .args(["build", "base"])
            .env("SOURCE_DATE_EPOCH", "253402300799"),
    );
    let cfg = skopeo_inspect(&s.layout(), "test-base:latest", &["--config"]);
    assert_eq!(cfg["created"], "9999-12-31T23:59:59Z");
}

#[test]
fn oversized_texts_and_documents_are_refused_and_the_old_ref_stays() {
    let s = Scratch::fixture("basic");
    run_ok(s.hakim().args(["build", "base"]));
    let index = fs::read(s.layout().join("index.json")).unwrap();
    let base = s.read("variants/base.yaml");

    let huge = "x".repeat(100 * 1024);
    s.write(
        "variants/base.yaml",
        &base.replace(
            "description: Fixture base image made of files and accounts\n",
            &format!("description: {huge}\n"),
        ),
    );
    let err = run_err(s.hakim().args(["build", "base"]));
    let re = regex::Regex::new(
        r"variants/base\.yaml:\d+:\d+: field `description`: is 102400 bytes; at most 65536",
    )
    .unwrap();
    assert!(re.is_match(&err), "{err}");

    // Each annotation within bounds, together over the 4 MiB registries accept.
    let mut many = String::from("  annotations:\n");
    for i in 0..70 {
        many.push_str(&format!(
            "    org.example.a{i}: {}\n",
            "y".repeat(60 * 1024)
        ));
    }
    s.write(
        "variants/base.yaml",
        &base.replace(
            "  stop_signal: SIGTERM\n",
            &format!("  stop_signal: SIGTERM\n{many}"),
        ),
    );
    let err = run_err(s.hakim().args(["build", "base"]));
    assert!(
        err.contains("image manifest would be") && err.contains("over the 4194304-byte limit"),
        "{err}"
    );
    assert_eq!(fs::read(s.layout().join("index.json")).unwrap(), index);
    skopeo_inspect(&s.layout(), "test-base:latest", &[]);
}

#[test]
fn entries_under_a_symlink_or_file_are_refused() {
    // Same layer: /usr/bin/hi is a symlink declared in `files`.
    let files = "layers/files/layer.yaml";
    let s = Scratch::fixture("basic");
    s.write(
        files,
        &s.read(files).replace(
            "directories:\n",
            "directories:\n  - path: /usr/bin/hi/evil\n",
        ),
    );
    let err = run_err(s.hakim().args(["build", "base"]));
    assert!(
        err.contains("directories[0].path: `/usr/bin/hi/evil` is below `/usr/bin/hi`, which is a symlink to `../local/bin/hello` in this layer"),
        "{err}"
    );
    assert_no_refs(&s);

    // Lower layer: /etc/app/app.conf is a file in `files`, below `users`.
    let s = Scratch::fixture("basic");
    fs::write(s.project().join("layers/users/evil"), "x").unwrap();
    s.write(
        USERS,
        &(s.read(USERS) + "files:\n  - src: evil\n    dest: /etc/app/app.conf/evil\n"),
    );
    let err = run_err(s.hakim().args(["build", "base"]));
    assert!(
        err.contains("files[0].dest: `/etc/app/app.conf/evil` is below `/etc/app/app.conf`, which is a file in a lower layer"),
        "{err}"
    );
    assert_no_refs(&s);
}

fn tar_gz_with_hardlink() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "top/", std::io::empty()).unwrap();
    let body = b"#!/bin/sh\necho ok\n";
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, "top/ok", &body[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_link(&mut h, "top/hl", "top/ok").unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

/// The layer blobs of `name:tag`, bottom first, as paths in the layout.
fn layer_blobs(layout: &Path, reference: &str) -> Vec<PathBuf> {
    let m = skopeo_inspect(layout, reference, &["--raw"]);
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
            layout.join("blobs/sha256").join(d)
        })
        .collect()
}

#[test]
fn archive_hardlinks_follow_their_target_for_umoci_and_tar() {
    require_bin("tar", "tar");
    let s = Scratch::fixture("basic");
    let archive = tar_gz_with_hardlink();
    let digest = hakim::digest::Sha256Digest::of(&archive).hex();
    fs::create_dir_all(s.project().join("layers/hl")).unwrap();
    fs::write(s.project().join("layers/hl/pair.tar.gz"), &archive).unwrap();
    s.write(
        "layers/hl/layer.yaml",
        &format!("archives:\n  - url: pair.tar.gz\n    sha256: {digest}\n    dest: /opt\n"),
    );
    s.write("variants/hl.yaml", "name: test-hl\nlayers: [hl]\n");
    run_ok(s.hakim().args(["build", "hl"]));

    let root = umoci_unpack(&s.layout(), "test-hl:latest", &s.dir.path().join("bundle"));
    let a = fs::metadata(root.join("opt/top/ok")).unwrap();
    let b = fs::metadata(root.join("opt/top/hl")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));

    let blob = &layer_blobs(&s.layout(), "test-hl:latest")[0];
    let x = s.dir.path().join("tar-x");
    fs::create_dir_all(&x).unwrap();
    run_ok(Command::new("tar").arg("-xzf").arg(blob).arg("-C").arg(&x));
    assert_eq!(
        fs::read(x.join("opt/top/hl")).unwrap(),
        b"#!/bin/sh\necho ok\n"
    );
    let listing = run_ok(Command::new("tar").arg("-tzf").arg(blob));
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(String::from)
        .collect();
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert!(pos("opt/top/ok") < pos("opt/top/hl"), "{names:?}");
}

/// The cache's copy of each layer of `test-base:latest`.
fn cached_layer_blobs(s: &Scratch) -> Vec<PathBuf> {
    layer_blobs(&s.layout(), "test-base:latest")
        .iter()
        .map(|p| s.cache().join("blobs/sha256").join(p.file_name().unwrap()))
        .collect()
}

/// Rebuild, then hakim's `cached` flag per layer. The flags are hakim's word; the evidence that
/// nothing corrupt was reused is read from disk: every cached layer blob (and so every layer
/// in the layout, which skopeo checks) hashes to its name again.
fn cached_flags(s: &Scratch) -> Vec<bool> {
    let out = run_ok(s.hakim().args(["build", "base", "--json"]));
    for b in cached_layer_blobs(s) {
        let name = b.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
        assert_eq!(
            hakim::digest::Sha256Digest::of(&bytes).hex(),
            name,
            "the cache kept a corrupt layer blob"
        );
    }
    let v = json(&out);
    v["variants"][0]["archs"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["cached"].as_bool().unwrap())
        .collect()
}

#[test]
fn corrupt_layer_cache_entries_are_rebuilt_never_reused() {
    let s = Scratch::fixture("basic");
    run_ok(s.hakim().args(["build", "base"]));
    let blobs = cached_layer_blobs(&s);
    for b in &blobs {
        let mode = fs::metadata(b).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444, "cache blobs are read-only: {}", b.display());
    }
    assert_eq!(cached_flags(&s), [true, true], "warm rebuild");

    let flip = |p: &Path| {
        let mut bytes = fs::read(p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        fs::write(p, bytes).unwrap();
    };
    // A flipped byte (same size) in the bottom layer.
    flip(&blobs[0]);
    assert_eq!(cached_flags(&s), [false, true]);
    skopeo_copy_check(&s);

    // A truncated top layer.
    let blobs = cached_layer_blobs(&s);
    let len = fs::metadata(&blobs[1]).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&blobs[1])
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_eq!(cached_flags(&s), [true, false]);
    skopeo_copy_check(&s);

    // A record pointing at the other layer's (intact) blob.
    let records: Vec<PathBuf> = fs::read_dir(s.cache().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".json") && !n.ends_with(".index.json")
        })
        .collect();
    let recs: Vec<serde_json::Value> = records
        .iter()
        .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
        .collect();
    let top = recs
        .iter()
        .position(|r| {
            let d = r["blob"]["digest"].as_str().unwrap();
            blobs[1].ends_with(d.trim_start_matches("sha256:"))
        })
        .expect("a record for the top layer");
    let other = 1 - top;
    let mut forged = recs[top].clone();
    forged["blob"]["digest"] = recs[other]["blob"]["digest"].clone();
    forged["blob"]["size"] = recs[other]["blob"]["size"].clone();
    fs::write(&records[top], serde_json::to_vec(&forged).unwrap()).unwrap();
    assert_eq!(cached_flags(&s), [true, false]);
    skopeo_copy_check(&s);
    let root = umoci_unpack(&s.layout(), "test-base:latest", &s.dir.path().join("b"));
    assert!(root.join("etc/app/app.conf").is_file());

    // `hakim cache verify` finds a flipped byte by itself and evicts the entry.
    let blobs = cached_layer_blobs(&s);
    flip(&blobs[1]);
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_hakim"))
            .arg("--cache-dir")
            .arg(s.cache())
            .args(["cache", "verify", "--json"]),
    );
    let report = json(&out);
    let name = blobs[1].file_name().unwrap().to_string_lossy().into_owned();
    let removed = report["removed"].as_array().unwrap();
    assert!(
        removed.iter().any(|r| r["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("{name} hashed to"))),
        "{report}"
    );
    assert!(!blobs[1].exists());
    assert!(report["layers"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(cached_flags(&s), [true, false]);
    skopeo_copy_check(&s);
}

/// skopeo copies the image, which checks every blob digest.
fn skopeo_copy_check(s: &Scratch) {
    require_bin("skopeo", "skopeo");
    let dest = s.dir.path().join("copy");
    let _ = fs::remove_dir_all(&dest);
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:test-base:latest", s.layout().display()))
            .arg(format!("oci:{}:x", dest.display())),
    );
}
