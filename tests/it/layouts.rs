//! The OCI layout as a shared resource: parallel builds into one layout and one cache, refs
//! kept across builds, file modes that follow the umask, and byte-identical JSON from
//! separate processes.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// The basic fixture with `n` files-only variants `par-<i>` (fast: no packages, no root).
fn many_variants(n: usize) -> Scratch {
    let s = Scratch::fixture("basic");
    for i in 0..n {
        s.write(
            &format!("variants/par{i}.yaml"),
            &format!("name: par-{i}\nlayers: [files]\ntags: [latest, \"t{i}\"]\n"),
        );
    }
    s
}

fn sha(bytes: &[u8]) -> String {
    hakim::digest::Sha256Digest::of(bytes).hex()
}

fn index(layout: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap()
}

/// ref name → manifest digest, from `index.json`.
fn refs(layout: &Path) -> Vec<(String, String)> {
    index(layout)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn eight_parallel_builds_into_one_layout_and_one_cache_keep_every_ref() {
    let s = many_variants(8);
    let children: Vec<_> = (0..8)
        .map(|i| {
            s.hakim()
                .args(["build", &format!("par{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let names: BTreeSet<String> = refs(&s.layout()).into_iter().map(|(n, _)| n).collect();
    let want: BTreeSet<String> = (0..8)
        .flat_map(|i| [format!("par-{i}:latest"), format!("par-{i}:t{i}")])
        .collect();
    assert_eq!(names, want);
    validate_layout(&s.layout());
    // Every image is readable, and the one shared layer was stored once, intact.
    let mut layers = BTreeSet::new();
    for i in 0..8 {
        let m = skopeo_inspect(&s.layout(), &format!("par-{i}:latest"), &["--raw"]);
        layers.insert(m["layers"][0]["digest"].as_str().unwrap().to_string());
    }
    assert_eq!(layers.len(), 1, "{layers:?}");
    let digest = layers.pop_first().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let blob = fs::read(s.layout().join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(sha(&blob), hex);
    let leftovers: Vec<_> = fs::read_dir(s.layout().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_build_keeps_the_refs_it_does_not_replace() {
    let s = many_variants(1);
    run_ok(s.hakim().args(["build", "par0"]));
    let first = refs(&s.layout());
    s.write(
        "variants/par0.yaml",
        "name: par-0\ndescription: changed\nlayers: [files]\ntags: [latest, t1]\n",
    );
    run_ok(s.hakim().args(["build", "par0"]));
    let second = refs(&s.layout());
    let digest = |r: &[(String, String)], n: &str| {
        r.iter().find(|(name, _)| name == n).map(|(_, d)| d.clone())
    };
    assert_eq!(
        second.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["par-0:latest", "par-0:t0", "par-0:t1"]
    );
    // t0 still names the first build; latest moved to the second.
    assert_eq!(digest(&second, "par-0:t0"), digest(&first, "par-0:t0"));
    assert_ne!(
        digest(&second, "par-0:latest"),
        digest(&first, "par-0:latest")
    );
    assert_eq!(digest(&second, "par-0:latest"), digest(&second, "par-0:t1"));
    validate_layout(&s.layout());
}

fn modes_under(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            out.extend(modes_under(&p));
        } else {
            out.push((p, meta.permissions().mode() & 0o777));
        }
    }
    out
}

fn build_with_umask(s: &Scratch, mask: u32) {
    let mut c = s.hakim();
    c.args(["build", "par0"]);
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
    run_ok(&mut c);
}

#[test]
fn layout_files_follow_the_umask_like_cp_and_tar() {
    for (mask, want) in [(0o022, 0o644), (0o027, 0o640)] {
        let s = many_variants(1);
        build_with_umask(&s, mask);
        let modes = modes_under(&s.layout());
        assert!(modes.len() >= 5, "{modes:?}");
        for (p, m) in modes {
            // Layer blobs are hardlinks of the cache's read-only blobs: the umask minus write.
            assert!(
                m == want || m == want & !0o222,
                "umask {mask:03o}: {} is {m:03o}",
                p.display()
            );
        }
    }
}

/// Every JSON document of a layout, by file name.
fn documents(layout: &Path) -> Vec<(String, Vec<u8>)> {
    let mut docs = vec![(
        "index.json".to_string(),
        fs::read(layout.join("index.json")).unwrap(),
    )];
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let bytes = fs::read(&p).unwrap();
        if bytes.first() == Some(&b'{') {
            docs.push((p.file_name().unwrap().to_string_lossy().into_owned(), bytes));
        }
    }
    docs.sort();
    docs
}

#[test]
fn two_processes_write_byte_identical_canonical_json() {
    let s = many_variants(0);
    // Many labels and annotations: the maps whose order a writer could get wrong.
    let mut labels = String::new();
    for k in ["zz", "a.b", "m", "B", "a", "é", "a-b", "k9", "k10"] {
        labels.push_str(&format!("    {k}: \"v-{k}\"\n"));
    }
    s.write(
        "variants/maps.yaml",
        &format!(
            "name: maps\nlayers: [files]\narchs: [amd64, arm64]\ntags: [latest]\nconfig:\n  labels:\n{labels}  annotations:\n{labels}"
        ),
    );
    let outs = [s.dir.path().join("o1"), s.dir.path().join("o2")];
    for (i, out) in outs.iter().enumerate() {
        // Separate caches too: nothing may be copied from the first run.
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_hakim"))
                .arg("--project")
                .arg(s.project())
                .arg("--cache-dir")
                .arg(s.dir.path().join(format!("cache{i}")))
                .arg("--out")
                .arg(out)
                .args(["build", "maps"]),
        );
    }
    let (a, b) = (
        documents(&outs[0].join("oci")),
        documents(&outs[1].join("oci")),
    );
    assert!(
        a.len() >= 6,
        "index.json, an index, 2 manifests, 2 configs: {a:?}"
    );
    assert_eq!(a, b);
    for (name, bytes) in &a {
        // Canonical: compact, keys sorted at every depth (serde_json's map is a BTreeMap).
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(
            &serde_json::to_vec(&v).unwrap(),
            bytes,
            "{name} is not canonical JSON"
        );
    }
    validate_layout(&outs[0].join("oci"));
}
