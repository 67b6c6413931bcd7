//! Random account fields, tags, env keys and paths through validation (issue 13): whatever
//! `Project::load` accepts must build into a layout that `umoci unpack` reads, with the
//! account databases still one well-formed line per entry.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::support::*;
use proptest::prelude::*;

/// Characters that matter to the formats involved (`:`, line breaks, NUL, `=`, `/`, `.`).
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 :/.\n\r\t=${}_-]{0,10}",
        "[\\x00-\\x7f]{0,6}",
        "/[a-z]{1,4}[:\n=.]{1,2}[a-z]{0,3}",
    ]
}

/// Mostly plausible values, sometimes hostile ones, so that both sides of validation
/// are reached in every run.
fn field(plausible: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![9 => plausible, 1 => hostile()]
}

#[derive(Debug, Clone)]
struct Case {
    user: String,
    group: String,
    home: String,
    shell: String,
    comment: String,
    tag: String,
    env_key: String,
    env_value: String,
    dir: String,
}

fn case() -> impl Strategy<Value = Case> {
    let name = "[a-z_][a-z0-9_-]{0,6}";
    let path = "/[a-z]{1,5}(/[a-z][a-z.]{0,3}){0,2}";
    (
        (
            field(name),
            field(name),
            field(path),
            field(path),
            field("[A-Za-z0-9 ,.]{0,12}"),
        ),
        (
            field("[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}"),
            field("[A-Za-z_][A-Za-z0-9_.]{0,8}"),
            field("[ -~]{0,12}"),
            field(path),
        ),
    )
        .prop_map(
            |((user, group, home, shell, comment), (tag, env_key, env_value, dir))| Case {
                user,
                group,
                home,
                shell,
                comment,
                tag,
                env_key,
                env_value,
                dir,
            },
        )
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn write_project(root: &Path, c: &Case) {
    fs::create_dir_all(root.join("layers/acct")).unwrap();
    fs::create_dir_all(root.join("variants")).unwrap();
    fs::write(
        root.join("layers/acct/layer.yaml"),
        format!(
            "accounts:\n  groups:\n    - name: {}\n      gid: 2000\n  users:\n    - name: {}\n      uid: 1000\n      groups: [{}]\n      home: {}\n      shell: {}\n      comment: {}\ndirectories:\n  - path: {}\n",
            q(&c.group),
            q(&c.user),
            q(&c.group),
            q(&c.home),
            q(&c.shell),
            q(&c.comment),
            q(&c.dir)
        ),
    )
    .unwrap();
    fs::write(
        root.join("variants/fz.yaml"),
        format!(
            "name: test-fz\nlayers: [acct]\ntags: [{}]\nconfig:\n  env:\n    {}: {}\n",
            q(&c.tag),
            q(&c.env_key),
            q(&c.env_value)
        ),
    )
    .unwrap();
}

fn check_built(work: &Path, project: &Path, c: &Case) {
    let cache = work.join("cache");
    let out = work.join("out");
    let _ = fs::remove_dir_all(&out);
    let built = run_ok(
        Command::new(env!("CARGO_BIN_EXE_hakim"))
            .arg("--project")
            .arg(project)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--out")
            .arg(&out)
            .args(["build", "fz", "--json"]),
    );
    // The ref as built: the tag may be a template such as `{date}`.
    let reference = json(&built)["variants"][0]["refs"][0]
        .as_str()
        .unwrap()
        .to_string();
    let root = umoci_unpack(&out.join("oci"), &reference, &work.join("bundle"));
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    for line in passwd.lines() {
        assert_eq!(line.split(':').count(), 7, "malformed passwd line {line:?}");
    }
    let want = format!(
        "{}:x:1000:1000:{}:{}:{}",
        c.user, c.comment, c.home, c.shell
    );
    assert!(
        passwd.lines().any(|l| l == want),
        "{want:?} not in {passwd:?}"
    );
    let group = fs::read_to_string(root.join("etc/group")).unwrap();
    for line in group.lines() {
        assert_eq!(line.split(':').count(), 4, "malformed group line {line:?}");
    }
    assert!(
        group.contains(&format!("{}:x:2000:{}", c.group, c.user)),
        "{group}"
    );
    let dir = c.dir.trim_start_matches('/');
    assert!(root.join(dir).is_dir(), "{} missing", c.dir);
}

#[test]
fn accepted_inputs_build_into_layouts_umoci_reads() {
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Every accepted case is a real build plus umoci unpack; keep it to 2 shared cores.
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let (accepted, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let work = tempfile::tempdir().unwrap();
    runner
        .run(&case(), |c| {
            let project = work.path().join("project");
            let _ = fs::remove_dir_all(&project);
            write_project(&project, &c);
            if hakim::spec::Project::load(&project).is_ok() {
                check_built(work.path(), &project, &c);
                accepted.fetch_add(1, Ordering::Relaxed);
            } else {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let (a, r) = (accepted.into_inner(), refused.into_inner());
    assert!(
        a > 0 && r > 0,
        "the cases must reach both sides: {a} accepted, {r} refused"
    );
}

/// The generator does reach the accepting side (otherwise the property above is vacuous).
#[test]
fn a_plain_case_is_accepted_and_builds() {
    let c = Case {
        user: "dev".into(),
        group: "devs".into(),
        home: "/home/dev".into(),
        shell: "/bin/sh".into(),
        comment: "Dev User".into(),
        tag: "v1".into(),
        env_key: "A_B".into(),
        env_value: "x=y z".into(),
        dir: "/srv/data".into(),
    };
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    write_project(&project, &c);
    hakim::spec::Project::load(&project).unwrap();
    check_built(work.path(), &project, &c);
}
