//! The hakim image on a simulated Proxmox VE (tests/support/pve.rs): the image PVE's pull
//! gets (pushed by `hakim push` to a local docker-registry, copied back with `skopeo copy
//! docker://… oci-archive:…` as `oci-registry-pull` does), imported under PVE's rules and
//! booted in LXC with only the create-time env a Terraform template sends. The agent must
//! come up on the first boot, a later start with a new token must use it, and a /home/coder
//! mount point must survive. Also: the same env under podman, and the image's label and env.
//!
//! Needs root, lxc, umoci, skopeo, docker-registry, podman and runc (scripts/test installs
//! them) and the Debian mirror for `hakim build base`; a missing prerequisite fails loudly.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::entrypoint_harness::{agent_report, assert_default_agent, new_token};
use crate::support::fake_coder::{FakeCoder, Options, Report};
use crate::support::image::{BASE_REF, Lxc, Podman, built_base, unique, unpacked_base, url_port};
use crate::support::layout::{Layout, tar_layer};
use crate::support::pve;
use crate::support::registry::TestRegistry;
use crate::support::{repo_root, require_bin, run_ok, skopeo_inspect};

const ENTRYPOINT: &str = "/usr/local/bin/hakim-entrypoint";
const IMAGE_ENV: &str = "/usr/lib/hakim/image.env";
const BOOT_WAIT: Duration = Duration::from_secs(120);
const AGENT_WAIT: Duration = Duration::from_secs(90);

/// `KEY=VALUE` lines of the image's env file, as a map.
fn image_env_file() -> std::collections::BTreeMap<String, String> {
    let text = fs::read_to_string(unpacked_base().join(IMAGE_ENV.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{IMAGE_ENV} in the image: {e}"));
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// What `oci-registry-pull` stores: `hakim push` to a local registry, then
/// `skopeo copy docker://127.0.0.1:PORT/team/hakim-base:latest oci-archive:…`.
fn pulled_from_registry(dir: &Path) -> PathBuf {
    require_bin("skopeo", "skopeo");
    let built = built_base();
    let reg = TestRegistry::open();
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_hakim"))
            .arg("--project")
            .arg(repo_root())
            .arg("--out")
            .arg(built.out.path())
            .args(["push", "base", "--registry"])
            .arg(format!("{}/team", reg.host())),
    );
    // PVE's default name: the reference's last path segment, `:` made `_`, plus `.tar`.
    let archive = dir.join("hakim-base_latest.tar");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/team/{BASE_REF}", reg.host()))
            .arg(format!("oci-archive:{}", archive.display())),
    );
    archive
}

fn env_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn pve_import_rules_let_any_image_env_key_replace_the_create_env() {
    // The harness itself: an image with an Env key (even an empty one) loses the token.
    let dir = tempfile::tempdir().unwrap();
    for (env, expect) in [
        (Some(vec!["PATH=/bin"]), vec![("PATH", "/bin")]),
        (Some(vec![]), vec![]),
        (None, vec![("CODER_AGENT_TOKEN", "t0k3n")]),
    ] {
        let layout_dir = dir.path().join(unique("layout"));
        let mut layout = Layout::new(&layout_dir);
        let layer = layout.blob(
            "application/vnd.oci.image.layer.v1.tar",
            &tar_layer(&[("bin/true", b"")]),
        );
        let mut config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest.oci()]},
        });
        if let Some(e) = &env {
            config["config"]["Env"] = serde_json::json!(e);
        }
        let config = layout.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).unwrap(),
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.json,
            "layers": [layer.json],
        });
        let m = layout.blob(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        layout.tag("t:latest", &m);
        let archive = dir.path().join(unique("t")).with_extension("tar");
        run_ok(
            Command::new("skopeo")
                .arg("copy")
                .arg(format!("oci:{}:t:latest", layout_dir.display()))
                .arg(format!("oci-archive:{}", archive.display())),
        );
        let work = dir.path().join(unique("work"));
        let imp = pve::import(&archive, &[("CODER_AGENT_TOKEN", "t0k3n")], &work);
        assert_eq!(imp.env, env_of(&expect), "image Env {env:?}");
        assert_eq!(imp.init_cmd, ["/bin/true"]);
        assert!(imp.application);
        assert!(imp.rootfs.join("bin/true").is_file());
    }
}

#[test]
fn pve_registry_pull_boots_the_agent_first_time_and_a_new_token_wins_later() {
    let ct = Lxc::new("hakim-pve");
    let archive = pulled_from_registry(ct.path.path());
    first_boot_then_restart_with_a_new_token(&ct, &archive);
}

#[test]
fn pve_release_tar_from_hakim_export_boots_the_agent_first_time() {
    let ct = Lxc::new("hakim-pvex");
    let built = built_base();
    let archive = ct.path.path().join("hakim-base_latest.tar");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_hakim"))
            .arg("--project")
            .arg(repo_root())
            .arg("--out")
            .arg(built.out.path())
            .args(["export", "oci-archive", "base", "-o"])
            .arg(&archive),
    );
    first_boot_then_restart_with_a_new_token(&ct, &archive);
}

/// Imports `archive` as PVE does, with only the agent URL and token as create-time env, and
/// boots it with a /home/coder mount point: the agent must come up on the first boot; after a
/// stop, a new token and a start, the new token must win and the home must be intact.
fn first_boot_then_restart_with_a_new_token(ct: &Lxc, archive: &Path) {
    let server = FakeCoder::start(Options::default());
    let url = server.access_url();
    let token = new_token();
    // Exactly what Terraform's environment_variables sends at create time.
    let imp = pve::import(
        archive,
        &[("CODER_AGENT_URL", &url), ("CODER_AGENT_TOKEN", &token)],
        &ct.dir(),
    );
    assert_eq!(imp.image_env, None, "the image config has an Env key");
    assert_eq!(imp.init_cmd, [ENTRYPOINT]);
    assert!(imp.application);
    assert_eq!(
        imp.env,
        env_of(&[("CODER_AGENT_URL", &url), ("CODER_AGENT_TOKEN", &token)])
    );

    // A dedicated /home/coder volume: root-owned, with lost+found, as a fresh ext4 is.
    let home = ct.path.path().join("home-volume");
    fs::create_dir_all(home.join("lost+found")).unwrap();
    fs::set_permissions(home.join("lost+found"), fs::Permissions::from_mode(0o700)).unwrap();
    let mounts: [(&Path, &str); 1] = [(&home, "/home/coder")];
    pve::configure(ct, &imp, &imp.env, &mounts);
    let port = url_port(&url);
    let fwd = pve::start(ct, port);
    let state = ct.wait_booted(BOOT_WAIT);
    assert!(state == "running" || state == "degraded", "{state}");
    let first = agent_report(&server, &token, "PVE first boot", || ct.log());
    assert_default_agent(&first, &token, &url);
    let env = image_env_file();
    assert_eq!(first["lang"], env["LANG"], "the agent lacks the image env");
    assert_eq!(server.downloads(), 1, "{:?}", server.paths());
    fs::write(home.join("notes.txt"), "kept\n").unwrap();

    // The provider rewrites the env with the next build's token and restarts the CT.
    run_ok(ct.cmd("lxc-stop", 60).args(["-t", "30"]));
    drop(fwd);
    let token2 = new_token();
    assert_ne!(token, token2);
    let env2 = env_of(&[("CODER_AGENT_URL", &url), ("CODER_AGENT_TOKEN", &token2)]);
    pve::configure(ct, &imp, &env2, &mounts);
    let _fwd = pve::start(ct, port);
    // The first start's report stays on the server; wait for one from the second start.
    let deadline = std::time::Instant::now() + AGENT_WAIT;
    let second = loop {
        let starts: Vec<Report> = server
            .reports()
            .into_iter()
            .filter(|r| r.get("event").map(String::as_str) == Some("start"))
            .collect();
        if starts.len() > 1 {
            break starts.last().unwrap().clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no agent after the restart; requests: {:?}\n{}",
            server.paths(),
            ct.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_default_agent(&second, &token2, &url);
    let saved = fs::read_to_string(imp.rootfs.join("etc/hakim/agent.env")).unwrap();
    assert!(
        saved.contains(&format!("CODER_AGENT_TOKEN={token2}")) && !saved.contains(&token),
        "the saved env file kept the old token"
    );
    assert_eq!(
        fs::read_to_string(home.join("notes.txt")).unwrap(),
        "kept\n"
    );
    let lf = fs::metadata(home.join("lost+found")).unwrap();
    assert_eq!(
        (lf.uid(), lf.mode() & 0o777),
        (0, 0o700),
        "lost+found changed"
    );
    assert_eq!(
        fs::metadata(&home).unwrap().uid(),
        1000,
        "home not given to coder"
    );
}

#[test]
fn podman_commands_see_the_image_env_and_runtime_values_win() {
    let built = built_base();
    let podman = Podman::new();
    let image = podman.pull(&built.layout(), BASE_REF);
    let env = image_env_file();
    // No credentials: the CMD sees the image env although the config has no Env.
    let out = run_ok(podman.cmd(120).args([
        "run",
        "--rm",
        "--network=host",
        &image,
        "sh",
        "-c",
        "echo \"$LANG|$LC_ALL|$PATH\"",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}|{}|{}", env["LANG"], env["LC_ALL"], env["PATH"])
    );
    // A value the runtime sets wins over the image's default.
    let out = run_ok(podman.cmd(120).args([
        "run",
        "--rm",
        "--network=host",
        "-e",
        "LANG=C.UTF-8",
        &image,
        "sh",
        "-c",
        "echo \"$LANG\"",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "C.UTF-8");
}

#[test]
fn image_has_no_env_key_and_a_devcontainer_label_naming_the_user() {
    let built = built_base();
    let config = skopeo_inspect(&built.layout(), BASE_REF, &["--config"]);
    let c = &config["config"];
    assert!(
        c.get("Env").is_none(),
        "an Env key (even empty) lets Proxmox drop the create-time env: {config}"
    );
    let label = c["Labels"]["devcontainer.metadata"]
        .as_str()
        .unwrap_or_else(|| panic!("no devcontainer.metadata label: {config}"));
    let meta: serde_json::Value = serde_json::from_str(label).unwrap();
    let entries = meta
        .as_array()
        .expect("devcontainer.metadata is a JSON array");
    assert_eq!(entries.len(), 1, "{meta}");
    let m = &entries[0];
    assert_eq!(m["remoteUser"], "coder", "{meta}");
    assert_eq!(m["containerUser"], "root", "{meta}");
    assert_eq!(m["updateRemoteUserUID"], true, "{meta}");
    let env = image_env_file();
    assert_eq!(m["containerEnv"], serde_json::json!(env), "{meta}");
    assert!(env["PATH"].contains("/usr/bin") && !env["LANG"].is_empty());
    // Login shells get the same env as defaults, from /etc/profile.d.
    let root = unpacked_base();
    assert!(root.join("etc/profile.d/hakim-env.sh").is_file());
    // `hakim run` sees the same effective env as before.
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_hakim"))
            .arg("--project")
            .arg(repo_root())
            .arg("--out")
            .arg(built.out.path())
            .args(["run", "base", "--", "sh", "-c", "echo \"$LANG|$PATH\""]),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}|{}", env["LANG"], env["PATH"])
    );
}
