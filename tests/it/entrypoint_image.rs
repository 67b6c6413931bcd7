//! The Coder-native entrypoint on the REAL `hakim-base:latest`, run the ways users run it:
//! the shared entrypoint scenarios in bubblewrap over the umoci-unpacked rootfs, podman with
//! runc (Docker/devcontainer style), an LXC system container privileged and unprivileged
//! (what `pct` does with a rootfs), and a Proxmox-style OCI import (`lxc-create -t oci`, the
//! entrypoint as `lxc.init.cmd`). Every network target is the fake Coder server on 127.0.0.1;
//! LXC containers keep their own empty network and reach it through a loopback forwarder.
//!
//! Needs root, bwrap, umoci, skopeo, jq, podman, runc and lxc (scripts/test installs them) and
//! the Debian mirror for `hakim build base`; a missing prerequisite fails loudly.

use crate::support::fake_coder;

use crate::support::entrypoint_harness;

use crate::support::image::{
    BASE_REF, IDMAP_BASE, Lxc, NetnsForward, Podman, built_base, ensure_subids, lxc_base_config,
    unique, unpacked_base, url_port,
};
use crate::support::{require_bin, run_ok, skopeo_inspect};
use entrypoint_harness::{
    SCRIPT, Sandbox, agent_report, assert_default_agent, new_token, scenarios, write_file,
};
use fake_coder::{FakeCoder, Options, Report};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ENTRYPOINT: &str = "/usr/local/bin/hakim-entrypoint";
const BOOT_WAIT: Duration = Duration::from_secs(120);

/// A bwrap sandbox over the unpacked image, running the image's own entrypoint.
fn image_sandbox() -> Sandbox {
    let root = unpacked_base();
    Sandbox::on(
        root.to_path_buf(),
        &root.join(ENTRYPOINT.trim_start_matches('/')),
    )
}

#[test]
fn image_ships_the_repository_entrypoint_as_its_entrypoint() {
    let built = built_base();
    let config = skopeo_inspect(&built.layout(), BASE_REF, &["--config"]);
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!([ENTRYPOINT]), "{config}");
    assert!(c["Cmd"].is_null(), "cmd must stay empty: {config}");
    assert_eq!(c["WorkingDir"], "/home/coder", "{config}");
    assert_eq!(c["StopSignal"], "SIGTERM", "{config}");
    let root = unpacked_base();
    let script = root.join(ENTRYPOINT.trim_start_matches('/'));
    assert_eq!(
        fs::read(&script).unwrap(),
        fs::read(SCRIPT).unwrap(),
        "the image's entrypoint differs from the repository's"
    );
    let m = fs::metadata(&script).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755));
    // The enablement link resolves, inside the rootfs, to the layer's unit.
    let unit_dir = root.join("etc/systemd/system");
    let link = fs::read_link(unit_dir.join("multi-user.target.wants/hakim-agent.service")).unwrap();
    let target = if link.is_absolute() {
        root.join(link.strip_prefix("/").unwrap())
    } else {
        unit_dir.join("multi-user.target.wants").join(&link)
    };
    assert_eq!(
        fs::read(&target).unwrap_or_else(|e| panic!("wants link {link:?}: {e}")),
        fs::read(
            Path::new(SCRIPT)
                .ancestors()
                .nth(4)
                .unwrap()
                .join("etc/systemd/system/hakim-agent.service")
        )
        .unwrap(),
        "the enabled unit is not the layer's hakim-agent.service"
    );
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("coder:x:1000:1000:") && l.contains(":/home/coder:")),
        "{passwd}"
    );
}

/// The key scenarios of tests/entrypoint.rs, on the image's rootfs and its own script.
mod sandbox_on_image {
    use super::*;

    macro_rules! on_image {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    scenarios::$name(&image_sandbox);
                }
            )*
        };
    }

    on_image!(
        env_credentials_start_agent_as_user_and_term_stops_it,
        token_file_and_trailing_slash_url_with_project_dir,
        bootstrap_with_path_prefix,
        server_unavailable_first_then_up,
        home_volume_with_lost_found_is_not_chowned_recursively,
        no_credentials_runs_cmd_as_user,
        no_credentials_no_cmd_starts_login_shell,
        connection_refused_is_logged_and_retried,
        system_mode_saves_env_file_and_execs_init,
        service_waits_for_env_file,
        new_token_in_the_start_env_wins_over_the_saved_file,
        explain_reports_the_decision_without_secrets,
    );
}

#[test]
fn podman_runc_application_mode() {
    let built = built_base();
    let podman = Podman::new();
    let runtime = run_ok(
        podman
            .cmd(60)
            .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"]),
    );
    assert_eq!(String::from_utf8_lossy(&runtime.stdout).trim(), "runc");
    let image = podman.pull(&built.layout(), BASE_REF);

    // No credentials: the CMD runs as the workspace user.
    let out = run_ok(podman.cmd(120).args([
        "run",
        "--rm",
        "--network=host",
        &image,
        "sh",
        "-c",
        "echo hi; id -un",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "hi\ncoder\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Credentials: the agent connects as uid 1000 with HOME=/home/coder.
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let name = unique("hakim-podman");
    podman.track(&name);
    // `-e NAME` without a value takes it from podman's environment: the token is never argv.
    run_ok(
        podman
            .cmd(120)
            .args(["run", "-d", "--name", &name, "--network=host"])
            .args(["-e", "CODER_AGENT_URL", "-e", "CODER_AGENT_TOKEN", &image])
            .env("CODER_AGENT_URL", server.access_url())
            .env("CODER_AGENT_TOKEN", &token),
    );
    let logs = || {
        let out = podman.cmd(30).args(["logs", &name]).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let report = agent_report(&server, &token, "podman", logs);
    assert_default_agent(&report, &token, &server.access_url());
    assert_eq!(report["cwd"], "/home/coder");
    // The image env reaches the agent although the image config has no Env.
    assert_eq!(report["lang"], "en_US.UTF-8", "{report:?}");

    // `podman stop` sends SIGTERM; the entrypoint forwards it and exits with the agent. Had it
    // ignored the signal, podman would SIGKILL it after 20 s: exit code 137, not 0 (below).
    run_ok(podman.cmd(60).args(["stop", "-t", "20", &name]));
    assert!(
        server
            .wait_report("term", Duration::from_secs(5), || {})
            .is_some(),
        "the agent never got SIGTERM; logs:\n{}",
        logs()
    );
    let code = run_ok(
        podman
            .cmd(30)
            .args(["inspect", "--format", "{{.State.ExitCode}}", &name]),
    );
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "the container was killed instead of stopping cleanly; logs:\n{}",
        logs()
    );
    let all = logs();
    assert!(!all.contains(&token), "token in the container log:\n{all}");
    assert!(all.contains("/bin/coder-linux-"), "{all}");
}

/// Checks a booted LXC container whose agent should be running under systemd.
fn assert_agent_service(ct: &Lxc, server: &FakeCoder, token: &str) -> Report {
    let state = ct.wait_booted(BOOT_WAIT);
    assert!(state == "running" || state == "degraded", "{state}");
    let report = agent_report(server, token, &ct.name, || ct.log());
    assert_default_agent(&report, token, &server.access_url());
    let active = ct.attach(30, &["systemctl", "is-active", "hakim-agent.service"]);
    assert_eq!(
        String::from_utf8_lossy(&active.stdout).trim(),
        "active",
        "hakim-agent.service; log:\n{}",
        ct.log()
    );
    let journal = ct.attach(
        30,
        &[
            "journalctl",
            "-u",
            "hakim-agent.service",
            "--no-pager",
            "-o",
            "cat",
        ],
    );
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(!journal.contains(token), "token in the journal:\n{journal}");
    assert!(
        journal.contains("starting coder agent as coder (uid 1000)"),
        "{journal}"
    );
    report
}

#[test]
fn lxc_privileged_system_container_reads_pid1_environment() {
    let ct = Lxc::new("hakim-lxc");
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let rootfs = ct.dir().join("rootfs");
    fs::create_dir_all(ct.dir()).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(unpacked_base())
            .arg(&rootfs),
    );
    // As pct does for a system container: /sbin/init is PID 1 and the CT env goes to it.
    let config = format!(
        "{}lxc.environment = CODER_AGENT_URL={}\nlxc.environment = CODER_AGENT_TOKEN={token}\n",
        lxc_base_config(&ct.name, &rootfs, &ct.dir().join("console.log")),
        server.access_url()
    );
    write_file(&ct.dir().join("config"), &config, 0o600);
    ct.start();
    let _fwd = NetnsForward::start(ct.init_pid(), url_port(&server.access_url()));
    let report = assert_agent_service(&ct, &server, &token);
    assert_eq!(report["cwd"], "/home/coder");
    assert!(
        !rootfs.join("etc/hakim/agent.env").exists(),
        "booting /sbin/init directly must not need the env file"
    );
}

#[test]
fn lxc_unprivileged_system_container_reads_env_file() {
    ensure_subids();
    let ct = Lxc::new("hakim-lxcu");
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    fs::create_dir_all(ct.dir()).unwrap();
    // The mapped root must be able to reach its rootfs.
    for d in [ct.path.path(), &ct.dir()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o711)).unwrap();
    }
    // umoci shifts every owner into the mapped range, as Proxmox does for unprivileged CTs.
    let map = format!("0:{IDMAP_BASE}:65536");
    let bundle = ct.dir().join("bundle");
    require_bin("umoci", "umoci");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--uid-map", &map, "--gid-map", &map, "--image"])
            .arg(format!("{}:{BASE_REF}", built_base().layout().display()))
            .arg(&bundle),
    );
    fs::set_permissions(&bundle, fs::Permissions::from_mode(0o711)).unwrap();
    let rootfs = bundle.join("rootfs");
    let home = fs::metadata(rootfs.join("home/coder")).unwrap();
    assert_eq!(home.uid(), IDMAP_BASE + 1000, "rootfs not shifted");
    // The host delivers the token as Proxmox does (pct push / a pre-start hook): a 0600
    // root-owned env file in the CT.
    let env_dir = rootfs.join("etc/hakim");
    fs::create_dir_all(&env_dir).unwrap();
    fs::set_permissions(&env_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let env_file = env_dir.join("agent.env");
    write_file(
        &env_file,
        &format!(
            "CODER_AGENT_URL={}\nCODER_AGENT_TOKEN={token}\n",
            server.access_url()
        ),
        0o600,
    );
    for p in [&env_dir, &env_file] {
        std::os::unix::fs::chown(p, Some(IDMAP_BASE), Some(IDMAP_BASE)).unwrap();
    }
    let config = format!(
        "{}lxc.include = /usr/share/lxc/config/debian.userns.conf\n\
         lxc.idmap = u 0 {IDMAP_BASE} 65536\nlxc.idmap = g 0 {IDMAP_BASE} 65536\n",
        lxc_base_config(&ct.name, &rootfs, &ct.dir().join("console.log")),
    );
    write_file(&ct.dir().join("config"), &config, 0o644);
    ct.start();
    let pid = ct.init_pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&IDMAP_BASE.to_string())),
        "init is not running as the mapped root:\n{status}"
    );
    let _fwd = NetnsForward::start(pid, url_port(&server.access_url()));
    assert_agent_service(&ct, &server, &token);
    // The agent runs as the container's uid 1000, i.e. host uid 101000.
    let host_uid = format!("Uid:\t{}\t", IDMAP_BASE + 1000);
    let shifted = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("status")).ok())
        .any(|s| s.lines().any(|l| l.starts_with(&host_uid)));
    assert!(shifted, "no process runs as host uid {}", IDMAP_BASE + 1000);
}

/// Imports the image as Proxmox does (`skopeo copy` to an oci-archive, `lxc-create -t oci`)
/// and configures an application-style CT: the entrypoint as `lxc.init.cmd` and `env` as
/// `lxc.environment`. Returns the console log path.
fn oci_import(ct: &Lxc, env: &[(&str, &str)]) -> PathBuf {
    require_bin("skopeo", "skopeo");
    let built = built_base();
    let archive = ct.path.path().join("hakim-base.tar");
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:{BASE_REF}", built.layout().display()))
            .arg(format!("oci-archive:{}", archive.display())),
    );
    crate::support::image::lxc_create_oci(ct, &archive, ENTRYPOINT, env)
}

#[test]
fn proxmox_style_oci_import_boots_through_the_entrypoint() {
    let ct = Lxc::new("hakim-oci");
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let url = server.access_url();
    // What PVE writes for an application-style CT: the entrypoint as init, env as given.
    let console = oci_import(
        &ct,
        &[("CODER_AGENT_URL", &url), ("CODER_AGENT_TOKEN", &token)],
    );
    ct.start();
    let pid = ct.init_pid();
    let _fwd = NetnsForward::start(pid, url_port(&server.access_url()));
    let log = || {
        format!(
            "{}\n--- console ---\n{}",
            ct.log(),
            fs::read_to_string(&console).unwrap_or_default()
        )
    };
    let state = ct.wait_booted(BOOT_WAIT);
    assert!(state == "running" || state == "degraded", "{state}");
    let report = agent_report(&server, &token, "oci import", log);
    assert_default_agent(&report, &token, &server.access_url());
    // systemd rewrites the console log once it is PID 1, so the entrypoint's own line may be
    // gone; the saved env file below is the proof that it ran first.
    let console_text = fs::read_to_string(&console).unwrap_or_default();
    assert!(!console_text.contains(&token), "token on the console");
    let env_file = ct.dir().join("rootfs/etc/hakim/agent.env");
    let m = fs::metadata(&env_file).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));
    // The entrypoint exec'd systemd in place, without the token in init's environment.
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "systemd");
    let environ = String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/environ")).unwrap())
        .replace('\0', "\n");
    assert!(environ.contains("container=lxc"), "{environ}");
    assert!(
        !environ.contains(&token),
        "token in init's environment:\n{environ}"
    );
    let active = ct.attach(30, &["systemctl", "is-active", "hakim-agent.service"]);
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    // `pct shutdown` is a clean lxc-stop: systemd shuts down and the agent gets SIGTERM.
    // --nokill: lxc-stop fails instead of killing the container if the clean halt never ends.
    run_ok(ct.cmd("lxc-stop", 60).args(["--nokill", "-t", "30"]));
    assert!(
        server
            .wait_report("term", Duration::from_secs(5), || {})
            .is_some(),
        "the agent never got SIGTERM at shutdown; log:\n{}",
        log()
    );
}

#[test]
fn oci_import_with_hakim_init_none_stops_cleanly_on_lxc_stop() {
    let ct = Lxc::new("hakim-ocia");
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let url = server.access_url();
    let console = oci_import(
        &ct,
        &[
            ("HAKIM_INIT", "none"),
            ("CODER_AGENT_URL", &url),
            ("CODER_AGENT_TOKEN", &token),
        ],
    );
    ct.start();
    let pid = ct.init_pid();
    let _fwd = NetnsForward::start(pid, url_port(&url));
    let log = || {
        format!(
            "{}\n--- console ---\n{}",
            ct.log(),
            fs::read_to_string(&console).unwrap_or_default()
        )
    };
    let report = agent_report(&server, &token, "oci import, HAKIM_INIT=none", log);
    assert_default_agent(&report, &token, &url);
    // Pure application mode: the entrypoint itself stays PID 1 and supervises the agent.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cmdline).replace('\0', " ").trim(),
        format!("/bin/sh {ENTRYPOINT}"),
        "{}",
        log()
    );
    // A clean `lxc-stop` (what `pct shutdown` runs) sends lxc.signal.halt, SIGPWR by default.
    // --nokill: lxc-stop fails instead of killing the container if the clean halt never ends.
    run_ok(ct.cmd("lxc-stop", 60).args(["--nokill", "-t", "30"]));
    assert!(
        server
            .wait_report("term", Duration::from_secs(5), || {})
            .is_some(),
        "the agent never got SIGTERM from the clean stop; log:\n{}",
        log()
    );
    let text = fs::read_to_string(&console).unwrap_or_default();
    assert!(!text.contains(&token), "token on the console:\n{text}");
}
