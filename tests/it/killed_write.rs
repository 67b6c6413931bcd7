//! A build killed while it is writing into the layout (a temp file is there, the blob is half
//! copied) leaves the previous `index.json` in place, valid, and naming readable images: blobs
//! are written first and `index.json` last.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

/// Temp files hakim is writing in the layout right now.
fn temp_files(layout: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [layout.to_path_buf(), layout.join("blobs/sha256")] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp") {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

#[test]
fn a_build_killed_mid_write_keeps_the_previous_index() {
    require_bin("skopeo", "skopeo");
    let s = Scratch::fixture("basic");
    // The cache on another filesystem than the layout: blobs are copied in, not hard-linked, so
    // a big blob keeps a temp file in the layout long enough to be caught.
    let shm = Path::new("/dev/shm");
    assert!(
        shm.is_dir(),
        "this test needs /dev/shm (a tmpfs) for its cache"
    );
    let cache = tempfile::tempdir_in(shm).unwrap();
    std::os::unix::fs::symlink(cache.path(), s.cache()).unwrap();
    let hakim = || s.hakim();
    run_ok(hakim().arg("build"));
    let index_before = std::fs::read(s.layout().join("index.json")).unwrap();

    let big = s.project().join("layers/tool/big.bin");
    let mut f = std::fs::File::create(&big).unwrap();
    std::io::copy(
        &mut std::fs::File::open("/dev/urandom").unwrap().take(256 << 20),
        &mut f,
    )
    .unwrap();
    s.write(
        "layers/tool/layer.yaml",
        &(s.read("layers/tool/layer.yaml") + "files:\n  - src: big.bin\n    dest: /opt/big.bin\n"),
    );
    let mut child = hakim()
        .arg("build")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let caught = loop {
        let tmp = temp_files(&s.layout());
        if !tmp.is_empty() {
            child.kill().unwrap();
            break tmp;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the build ended ({st}) before a write into the layout was caught");
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    child.wait().unwrap();
    // The write really was interrupted: its temp file is still there, never renamed.
    let left: Vec<_> = caught.iter().filter(|p| p.exists()).collect();
    assert!(
        !left.is_empty(),
        "the kill landed after the write finished: {caught:?}"
    );

    assert_eq!(
        std::fs::read(s.layout().join("index.json")).unwrap(),
        index_before,
        "index.json changed although the build was killed"
    );
    validate_layout(&s.layout());
    for r in ["test-base:latest", "test-app:latest"] {
        let raw = skopeo_inspect(&s.layout(), r, &["--raw"]);
        assert_eq!(raw["schemaVersion"], 2, "{r}: {raw}");
    }
    // And the next build completes over the debris.
    run_ok(hakim().arg("build"));
    assert_ne!(
        std::fs::read(s.layout().join("index.json")).unwrap(),
        index_before
    );
    validate_layout(&s.layout());
}
