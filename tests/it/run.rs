//! `hakim run` and `hakim test` against images built from a project with a static busybox.
//! Needs root, bwrap and busybox-static (fails loudly otherwise).

use std::path::Path;

use crate::support::{Scratch, json, require_bin, require_root, run_err, run_ok};

const APPLETS: &[&str] = &[
    "sh", "id", "pwd", "echo", "cat", "ls", "touch", "stat", "sleep",
];

/// The basic fixture plus a busybox layer and variants that run it.
fn project() -> Scratch {
    require_root();
    require_bin("bwrap", "bubblewrap");
    let bb = Path::new("/bin/busybox");
    assert!(
        bb.is_file(),
        "missing test prerequisite /bin/busybox: install it with `apt-get install busybox-static` (scripts/test does this)"
    );
    let s = Scratch::fixture("basic");
    let bin = s.project().join("layers/busybox/rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(bb, bin.join("busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
    }
    s.write(
        "layers/busybox/layer.yaml",
        "description: A static busybox\n",
    );
    let config =
        "config:\n  env:\n    FOO: hello from config\n  user: coder\n  workdir: /home/coder/work\n";
    s.write(
        "variants/runner.yaml",
        &format!(
            "name: test-runner\nlayers: [busybox, users]\ntags: [latest]\n{config}tests:
  - name: runs as coder
    run: id -u
    stdout: '^1000\\n$'
  - name: root when asked
    run: id -u; echo oops >&2; exit 4
    user: root
    exit_code: 4
    stdout: '^0'
  - name: wrong exit code
    run: echo about to fail; echo bad things >&2; exit 3
  - name: wrong stdout
    run: echo goodbye
    stdout: '^hello'
"
        ),
    );
    s.write(
        "variants/good.yaml",
        &format!("name: test-good\nlayers: [busybox, users]\ntags: [latest]\n{config}tests:\n  - name: env\n    run: echo $FOO\n    stdout: '^hello from config'\n"),
    );
    s.write(
        "variants/slow.yaml",
        &format!("name: test-slow\nlayers: [busybox, users]\ntags: [latest]\n{config}tests:\n  - name: hangs\n    run: sleep 60\n"),
    );
    s.write(
        "variants/unbuilt.yaml",
        &format!("name: test-unbuilt\nlayers: [busybox]\ntags: [v1]\n{config}"),
    );
    run_ok(s.hakim().args(["build", "runner", "good", "slow"]));
    s
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn run_uses_the_image_user_workdir_and_env_and_changes_nothing() {
    let s = project();
    let out = run_ok(
        s.hakim()
            .args(["run", "runner", "--", "sh", "-c", "id -u; pwd; echo $FOO"]),
    );
    assert_eq!(stdout(&out), "1000\n/home/coder/work\nhello from config\n");
    // Supplementary groups come from the image's /etc/group (coder is in docker, 999).
    let out = run_ok(s.hakim().args(["run", "runner", "--", "id", "-G"]));
    assert_eq!(stdout(&out), "1000 999\n");
    let out = run_ok(
        s.hakim()
            .args(["run", "runner", "--user", "root", "--", "id", "-u"]),
    );
    assert_eq!(stdout(&out), "0\n");

    // The command's exit code is hakim's.
    let st = s
        .hakim()
        .args(["run", "runner", "--", "sh", "-c", "exit 7"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(7));

    // Writes are thrown away with the run; the cached layers stay as they were.
    run_ok(s.hakim().args([
        "run",
        "runner",
        "--",
        "touch",
        "/home/coder/work/made-by-run",
    ]));
    let out = run_ok(
        s.hakim()
            .args(["run", "runner", "--", "ls", "-A", "/home/coder/work"]),
    );
    assert_eq!(stdout(&out), "");
    let cached = walk_names(&s.cache().join("rootfs"));
    assert!(!cached.iter().any(|n| n == "made-by-run"), "{cached:?}");
    assert!(
        cached.iter().any(|n| n == "busybox"),
        "layers are cached under rootfs/: {cached:?}"
    );

    // No network unless asked for.
    let lines = |o: &std::process::Output| stdout(o).lines().count();
    let off = run_ok(
        s.hakim()
            .args(["run", "runner", "--", "cat", "/proc/net/dev"]),
    );
    let on = run_ok(
        s.hakim()
            .args(["run", "runner", "--network", "--", "cat", "/proc/net/dev"]),
    );
    assert_eq!(lines(&off), 3, "{}", stdout(&off));
    assert!(lines(&on) > 3, "{}", stdout(&on));

    // Host variables never reach the sandbox.
    let out = run_ok(s.hakim().env("HAKIM_TEST_SECRET", "hunter2").args([
        "run",
        "runner",
        "--",
        "cat",
        "/proc/self/environ",
    ]));
    assert!(!stdout(&out).contains("hunter2") && stdout(&out).contains("FOO=hello from config"));

    // No mounts are left behind.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(s.cache().to_str().unwrap()),
        "overlay left mounted"
    );
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_names(&e.path()));
        }
    }
    out
}

#[test]
fn run_of_an_unbuilt_variant_says_to_build_it() {
    let s = project();
    let err = run_err(s.hakim().args(["run", "unbuilt", "--", "id"]));
    assert!(
        err.contains("test-unbuilt:v1") && err.contains("hakim build unbuilt"),
        "{err}"
    );
    let err = run_err(s.hakim().args(["test", "unbuilt"]));
    assert!(err.contains("hakim build unbuilt"), "{err}");
}

#[test]
fn test_reports_each_test_and_fails_on_any_failure() {
    let s = project();
    let out = s.hakim().args(["test", "runner"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("ok   runs as coder"), "{text}");
    assert!(text.contains("ok   root when asked"), "{text}");
    assert!(
        text.contains("FAIL wrong exit code") && text.contains("exit code 3, expected 0"),
        "{text}"
    );
    assert!(
        text.contains("FAIL wrong stdout") && text.contains("stdout does not match /^hello/"),
        "{text}"
    );
    assert!(text.contains("2 passed, 2 failed"), "{text}");
    // The failing tests' output tails are shown; the passing test's stderr is not.
    assert!(
        err.contains("bad things") && err.contains("goodbye"),
        "{err}"
    );
    assert!(!err.contains("oops"), "{err}");

    let out = s
        .hakim()
        .args(["test", "runner", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let j = json(&out);
    assert_eq!(j["passed"], false);
    let v = &j["variants"][0];
    assert_eq!(
        (
            v["variant"].as_str(),
            v["reference"].as_str(),
            v["passed"].as_bool()
        ),
        (Some("runner"), Some("test-runner:latest"), Some(false))
    );
    let tests = v["tests"].as_array().unwrap();
    let summary: Vec<(&str, bool, i64)> = tests
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap(),
                t["passed"].as_bool().unwrap(),
                t["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("runs as coder", true, 0),
            ("root when asked", true, 4),
            ("wrong exit code", false, 3),
            ("wrong stdout", false, 0)
        ]
    );
    assert_eq!(tests[2]["expected_exit_code"], 0);
    assert_eq!(tests[2]["stdout"], "about to fail\n");
    assert_eq!(tests[2]["stderr"], "bad things\n");
    assert_eq!(
        tests[3]["failures"],
        serde_json::json!(["stdout does not match /^hello/"])
    );

    let out = run_ok(s.hakim().args(["test", "good"]));
    assert!(
        stdout(&out).contains("ok   env") && stdout(&out).contains("1 passed, 0 failed"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_hanging_test_is_killed_at_the_timeout() {
    let s = project();
    let started = std::time::Instant::now();
    let out = s
        .hakim()
        .args(["test", "slow", "--timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAIL hangs") && stdout(&out).contains("timed out after 1s"),
        "{}",
        stdout(&out)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}
