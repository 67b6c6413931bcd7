//! hakim's resolution agrees with apt: mmdebstrap, given the same suites (trixie, -updates,
//! -security), installs exactly the same name=version=arch set, for a bootstrap layer, for an
//! upper layer, and for an upper layer with Recommends.

use std::collections::BTreeSet;
use std::process::Command;

use crate::support::mirror_proxy::mirrors;
use crate::support::*;

const ANCHOR: &str =
    "ca-certificates,curl,git,jq,sudo,locales,openssh-client,unzip,procps,less,bash-completion";

/// `name=version=arch` of every package a lock entry holds.
fn locked(lock: &serde_json::Value, key: &str) -> BTreeSet<String> {
    lock["layers"][key]["packages"]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in lock"))
        .iter()
        .map(|p| {
            format!(
                "{}={}={}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            )
        })
        .collect()
}

/// `name=version=arch` of every installed package in a dpkg status file.
fn installed(status: &str) -> BTreeSet<String> {
    status
        .split("\n\n")
        .filter(|para| para.lines().any(|l| l == "Status: install ok installed"))
        .map(|para| {
            let field = |f: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(f))
                    .unwrap_or_else(|| panic!("no {f} in {para}"))
                    .to_string()
            };
            format!(
                "{}={}={}",
                field("Package: "),
                field("Version: "),
                field("Architecture: ")
            )
        })
        .collect()
}

fn assert_same(what: &str, ours: &BTreeSet<String>, theirs: &BTreeSet<String>) {
    let only_ours: Vec<_> = ours.difference(theirs).collect();
    let only_theirs: Vec<_> = theirs.difference(ours).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "{what}: only hakim: {only_ours:?}\nonly mmdebstrap: {only_theirs:?}"
    );
}

#[test]
fn resolution_matches_mmdebstrap_name_version_arch_with_updates_security_upper_layers_and_recommends()
 {
    require_root();
    require_bin("mmdebstrap", "mmdebstrap");
    let s = Scratch::fixture("debian");
    // An upper layer installed with Recommends, on top of the anchor set.
    s.write(
        "variants/rec.yaml",
        "name: test-rec\nfrom: anchor\nlayers: [rec]\n",
    );
    s.write(
        "layers/rec/layer.yaml",
        "packages: [gpg-agent]\nrecommends: true\n",
    );
    run_ok(s.hakim().args(["lock", "anchor", "extra", "rec"]));
    let lock: serde_json::Value = serde_json::from_str(&s.read("hakim.lock")).unwrap();
    let anchor = locked(&lock, "anchor@amd64");
    let extra = locked(&lock, "anchor/extra@amd64");
    let rec = locked(&lock, "anchor/rec@amd64");
    let suites: BTreeSet<&str> = lock["layers"]["anchor@amd64"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["suite"].as_str().unwrap())
        .collect();
    assert!(
        suites.len() > 1,
        "every package from one suite ({suites:?}), so the extra suites are not really compared"
    );
    assert!(
        rec.iter().any(|p| p.starts_with("gnupg=")),
        "gnupg (a Recommends of gpg-agent) is missing, so Recommends were not followed: {rec:?}"
    );

    // One mmdebstrap run: the anchor set, then each upper layer installed by apt on top of it
    // (as hakim's layers are), saving dpkg's status after each step.
    let (archive, security) = mirrors();
    let out = s.dir.path().join("mm");
    std::fs::create_dir_all(&out).unwrap();
    let o = out.display();
    // apt runs inside the chroot (its own dpkg database, its own sources): never the host's.
    let apt = r#"chroot "$1" apt-get --yes --quiet"#;
    run_ok(Command::new("mmdebstrap").args([
        "--quiet",
        "--variant=minbase",
        "--architectures=amd64",
        &format!("--include={ANCHOR}"),
        &format!(r#"--customize-hook=cp "$1/var/lib/dpkg/status" {o}/anchor"#),
        &format!(r#"--customize-hook={apt} -oAPT::Install-Recommends=false install file"#),
        &format!(r#"--customize-hook=cp "$1/var/lib/dpkg/status" {o}/extra"#),
        &format!(r#"--customize-hook={apt} -oAPT::Install-Recommends=true install gpg-agent"#),
        &format!(r#"--customize-hook=cp "$1/var/lib/dpkg/status" {o}/rec"#),
        "trixie",
        "/dev/null",
        &format!("deb {archive} trixie main"),
        &format!("deb {archive} trixie-updates main"),
        &format!("deb {security} trixie-security main"),
    ]));
    let read = |f: &str| installed(&std::fs::read_to_string(out.join(f)).unwrap());
    let (mm_anchor, mm_extra, mm_rec) = (read("anchor"), read("extra"), read("rec"));
    assert_same("bootstrap layer", &anchor, &mm_anchor);
    let added = |after: &BTreeSet<String>| after.difference(&mm_anchor).cloned().collect();
    assert_same("upper layer", &extra, &added(&mm_extra));
    // The rec step ran after extra's, so leave out what extra added.
    let rec_added: BTreeSet<String> = added(&mm_rec).difference(&mm_extra).cloned().collect();
    assert_same("upper layer with Recommends", &rec, &rec_added);
    assert!(anchor.len() > 100, "{}", anchor.len());
}
