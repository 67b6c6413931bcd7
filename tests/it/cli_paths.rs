//! CLI paths a user takes that no other test walks: `--image-version` with the git `source` and
//! `revision` annotations, `lock --update`, and `inspect --packages`.

use std::process::Command;

use crate::support::*;

fn git(s: &Scratch, args: &[&str]) -> String {
    let out = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(s.project())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn image_version_and_git_source_and_revision_land_in_annotations_and_labels() {
    require_bin("git", "git");
    let s = Scratch::fixture("basic");
    git(&s, &["init", "-q"]);
    git(&s, &["add", "."]);
    git(&s, &["commit", "-qm", "fixture"]);
    // An SSH remote is published as its browsable https form, without `.git`.
    git(
        &s,
        &[
            "remote",
            "add",
            "origin",
            "git@github.com:example/fixture.git",
        ],
    );
    let head = git(&s, &["rev-parse", "HEAD"]);
    run_ok(
        s.hakim()
            .args(["build", "base", "--image-version", "9.8.7"]),
    );
    let raw = skopeo_inspect(&s.layout(), "test-base:latest", &["--raw"]);
    let ann = &raw["annotations"];
    assert_eq!(ann["org.opencontainers.image.version"], "9.8.7", "{raw}");
    assert_eq!(
        ann["org.opencontainers.image.revision"],
        head.as_str(),
        "{raw}"
    );
    assert_eq!(
        ann["org.opencontainers.image.source"], "https://github.com/example/fixture",
        "{raw}"
    );
    let cfg = skopeo_inspect(&s.layout(), "test-base:latest", &["--config"]);
    let labels = &cfg["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "9.8.7", "{cfg}");
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        head.as_str(),
        "{cfg}"
    );
}

fn lock_json(s: &Scratch) -> serde_json::Value {
    serde_json::from_str(&s.read("hakim.lock")).unwrap()
}

#[test]
fn lock_update_re_resolves_what_a_plain_lock_keeps() {
    let s = Scratch::fixture("debian");
    run_ok(s.hakim().args(["lock", "anchor"]));
    let fresh = s.read("hakim.lock");
    // An entry as an older archive would have had it: a plain `lock` keeps it, `--update`
    // resolves again against the current archive.
    let lock = lock_json(&s);
    let p = &lock["layers"]["anchor@amd64"]["packages"][0];
    let (size, sha) = (p["size"].to_string(), p["sha256"].as_str().unwrap());
    let old = fresh
        .replacen(&format!("\"size\": {size}"), "\"size\": 1", 1)
        .replacen(sha, &format!("sha256:{}", "0".repeat(64)), 1);
    assert_ne!(old, fresh);
    s.write("hakim.lock", &old);
    run_ok(s.hakim().args(["lock", "anchor"]));
    assert_eq!(
        s.read("hakim.lock"),
        old,
        "a plain lock re-resolved a locked entry"
    );
    run_ok(s.hakim().args(["lock", "anchor", "--update"]));
    assert_eq!(
        lock_json(&s),
        serde_json::from_str::<serde_json::Value>(&fresh).unwrap()
    );
}

#[test]
fn inspect_packages_lists_each_layers_locked_packages() {
    let s = Scratch::fixture("debian");
    run_ok(s.hakim().args(["lock", "extra"]));
    let lock = lock_json(&s);
    let out = json(&run_ok(s.hakim().args([
        "inspect",
        "extra",
        "--packages",
        "--json",
    ])));
    let layers = out["layers"].as_array().unwrap();
    let names = |v: &serde_json::Value| -> Vec<String> {
        let mut n: Vec<String> = v
            .as_array()
            .unwrap_or_else(|| panic!("no package list: {out}"))
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    for (i, key) in ["anchor@amd64", "anchor/extra@amd64"].iter().enumerate() {
        assert_eq!(
            names(&layers[i]["packages"]),
            names(&lock["layers"][key]["packages"]),
            "layer {i}"
        );
    }
    assert!(names(&layers[1]["packages"]).contains(&"file".to_string()));
    // In the text form the packages appear only with --packages.
    let text =
        |args: &[&str]| String::from_utf8_lossy(&run_ok(s.hakim().args(args)).stdout).into_owned();
    let with = text(&["inspect", "extra", "--packages"]);
    let file = lock["layers"]["anchor/extra@amd64"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "file")
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        with.lines()
            .any(|l| l.contains(" file ") && l.contains(&file)),
        "{with}"
    );
    let without = text(&["inspect", "extra"]);
    assert!(!without.contains(&file), "{without}");
}
