//! Interrupted and starved builds (issue 13, item 10): SIGTERM cleans up before exit,
//! SIGKILL leftovers are removed by the next run without touching a running build, a full
//! disk leaves no partial blob, and the layout stays valid throughout.
//!
//! The rootfs layers here run a `run:` step over a busybox base: the same overlay +
//! bubblewrap machinery as a package layer, without needing the Debian mirror.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A project: `bb` (busybox base), `slow` (a run step that sleeps), `big` (a run step
/// writing a large incompressible file, so sealing takes a while).
fn project() -> Scratch {
    require_root();
    require_bin("bwrap", "bubblewrap");
    require_bin("findmnt", "util-linux");
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "missing test prerequisite /bin/busybox: apt-get install busybox-static"
    );
    let s = Scratch::fixture("basic");
    fs::create_dir_all(s.project().join("layers/bb")).unwrap();
    fs::copy(busybox, s.project().join("layers/bb/busybox")).unwrap();
    let mut bb = String::from(
        "files:\n  - src: busybox\n    dest: /bin/busybox\n    mode: \"0755\"\nsymlinks:\n",
    );
    for tool in ["sh", "sleep", "head", "cat"] {
        bb.push_str(&format!("  - path: /bin/{tool}\n    target: busybox\n"));
    }
    s.write("layers/bb/layer.yaml", &bb);
    s.write(
        "layers/slow/layer.yaml",
        "run:\n  - name: wait\n    script: sleep 600\n",
    );
    s.write(
        "layers/big/layer.yaml",
        "run:\n  - name: noise\n    script: head -c 300000000 /dev/urandom > /noise\n",
    );
    s.write("variants/bb.yaml", "name: test-bb\nlayers: [bb]\n");
    s.write(
        "variants/slow.yaml",
        "name: test-slow\nfrom: bb\nlayers: [slow]\n",
    );
    s.write(
        "variants/big.yaml",
        "name: test-big\nfrom: bb\nlayers: [big]\n",
    );
    s
}

/// Mount points at or below `dir`.
fn mounts_below(dir: &Path) -> Vec<String> {
    let out = run_ok(Command::new("findmnt").args(["-rn", "-o", "TARGET"]));
    let dir = dir.to_string_lossy().into_owned();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&dir))
        .map(String::from)
        .collect()
}

/// Temp files and build dirs anywhere under `dir` (names hakim gives them).
fn temp_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if name.starts_with(".tmp")
                || name.starts_with("layer-")
                || name.starts_with("empty-lower-")
            {
                out.push(e.path());
            } else if is_dir && !d.ends_with("rootfs") {
                stack.push(e.path());
            }
        }
    }
    out
}

fn hakim_empty_dirs() -> Vec<PathBuf> {
    fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("hakim-empty-"))
        .map(|e| e.path())
        .collect()
}

/// Wait (bounded, generously) until `cond` holds while `child` still runs.
fn wait_for(child: &mut Child, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !cond() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the build ended ({st}) before {what}");
        }
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(s: &Scratch, variant: &str) -> Child {
    s.hakim()
        .args(["build", variant])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A build running the `slow` layer, with its overlay mounted.
fn in_run_step(s: &Scratch) -> Child {
    let mut c = start(s, "slow");
    let cache = s.cache();
    wait_for(&mut c, "the run step's overlay was mounted", || {
        !mounts_below(&cache).is_empty()
    });
    c
}

/// A build sealing the `big` layer: its blob is being compressed into the cache.
fn sealing(s: &Scratch) -> Child {
    let mut c = start(s, "big");
    let tmp = s.cache().join("blobs/tmp");
    wait_for(&mut c, "the layer blob was being written", || {
        fs::read_dir(&tmp).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
        })
    });
    c
}

fn signal(c: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0);
}

fn assert_clean(s: &Scratch, when: &str) {
    assert_eq!(
        mounts_below(s.dir.path()),
        Vec::<String>::new(),
        "mounts {when}"
    );
    assert_eq!(
        temp_entries(s.dir.path()),
        Vec::<PathBuf>::new(),
        "temp files {when}"
    );
}

fn layout_still_valid(s: &Scratch) {
    validate_layout(&s.layout());
    skopeo_inspect(&s.layout(), "test-bb:latest", &[]);
}

#[test]
fn sigterm_and_sigint_clean_up_before_exit() {
    let s = project();
    let empties = hakim_empty_dirs();
    run_ok(s.hakim().args(["build", "bb"]));
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        for point in [in_run_step as fn(&Scratch) -> Child, sealing] {
            let mut c = point(&s);
            signal(&c, sig);
            let out = c.wait_with_output_timeout();
            assert_eq!(out.0.code(), Some(code), "{}", out.1);
            assert!(out.1.contains("interrupted"), "{}", out.1);
            assert_clean(&s, &format!("right after signal {sig}"));
            layout_still_valid(&s);
        }
    }
    assert_eq!(
        hakim_empty_dirs(),
        empties,
        "/tmp/hakim-empty-* left behind"
    );
}

#[test]
fn sigkill_leftovers_are_removed_by_the_next_run_but_a_running_build_is_untouched() {
    let s = project();
    run_ok(s.hakim().args(["build", "bb"]));
    for point in [in_run_step as fn(&Scratch) -> Child, sealing] {
        let mut c = point(&s);
        c.kill().unwrap();
        c.wait().unwrap();
        assert!(
            !temp_entries(s.dir.path()).is_empty() || !mounts_below(s.dir.path()).is_empty(),
            "a SIGKILL should leave something for the next run to clean"
        );
        run_ok(s.hakim().args(["build", "bb"]));
        assert_clean(&s, "after the next run");
        // A build in flight while the next run sweeps keeps its mount and files.
        let mut running = in_run_step(&s);
        let mounts = mounts_below(&s.cache());
        let files = temp_entries(s.dir.path());
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        run_ok(s.hakim().args(["build", "bb"]));
        assert_eq!(
            mounts_below(&s.cache()),
            mounts,
            "the running build's mount"
        );
        assert_eq!(
            temp_entries(s.dir.path()),
            files,
            "the running build's files"
        );
        assert!(
            running.try_wait().unwrap().is_none(),
            "the running build died"
        );
        running.kill().unwrap();
        running.wait().unwrap();
        run_ok(s.hakim().args(["build", "bb"]));
        assert_clean(&s, "after the next run");
        layout_still_valid(&s);
    }
}

#[test]
fn cache_prune_removes_leftovers_and_keeps_to_a_budget() {
    let s = project();
    run_ok(s.hakim().args(["build", "bb", "base"]));
    let mut c = in_run_step(&s);
    c.kill().unwrap();
    c.wait().unwrap();
    let report = hakim::prune::prune(&s.cache(), None).unwrap();
    assert!(report.leftovers > 0 && report.unmounted == 1, "{report:?}");
    assert_clean(&s, "after prune");
    let before = report.remaining;
    let report = hakim::prune::prune(&s.cache(), Some(before / 2)).unwrap();
    assert!(report.remaining <= before / 2, "{report:?}");
    assert!(report.entries > 0 && report.freed > 0, "{report:?}");
    // What is left still builds; what was pruned is rebuilt.
    run_ok(s.hakim().args(["build", "bb", "base"]));
    layout_still_valid(&s);
}

/// A size-limited tmpfs, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn new(dir: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&dir).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir),
        );
        Self(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_leaves_no_partial_blob_and_the_next_build_works() {
    require_root();
    let s = Scratch::fixture("basic");
    let small = SmallFs::new(s.dir.path().join("small"), "6m");
    let cache = small.0.join("cache");
    let out = small.0.join("out");
    let hakim = |variant: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hakim"));
        c.arg("--project")
            .arg(s.project())
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--out")
            .arg(&out)
            .args(["build", variant]);
        c
    };
    run_ok(&mut hakim("base"));
    // Noise does not compress: 8 MiB cannot fit in what is left of 6 MiB.
    let big = s.project().join("layers/files/rootfs/opt/noise");
    fs::create_dir_all(big.parent().unwrap()).unwrap();
    fs::write(&big, crate::support::layout::noise(8 << 20, 7)).unwrap();
    let err = run_err(&mut hakim("base"));
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(
        temp_entries(&small.0),
        Vec::<PathBuf>::new(),
        "partial files left"
    );
    // The next, small build fits again.
    fs::write(&big, b"small now").unwrap();
    run_ok(&mut hakim("base"));
    validate_layout(&out.join("oci"));
    skopeo_inspect(&out.join("oci"), "test-base:latest", &[]);
}

trait WaitOutput {
    fn wait_with_output_timeout(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitOutput for Child {
    /// Wait (bounded) for exit and return the status and stderr.
    fn wait_with_output_timeout(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(st) = self.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                panic!("the build did not exit after the signal");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        (status, err)
    }
}
