//! Real runs of `layers/entrypoint/rootfs/usr/local/bin/hakim-entrypoint` as PID 1 inside
//! bubblewrap, against a fake Coder server on 127.0.0.1.
//!
//! The sandbox root is `HAKIM_TEST_ROOTFS` (default: the hakim-base image this test run built,
//! umoci-unpacked), mounted read-only, with writable copies/binds for /etc (a copy), /home, /var,
//! /run, /tmp and /usr/local/bin (which holds the script under test). Point `HAKIM_TEST_ROOTFS`
//! at another rootfs to run the same scenarios there. Needs root, bwrap and shellcheck; a
//! missing prerequisite fails the test loudly.

use crate::support::fake_coder;

use crate::support::entrypoint_harness;

use entrypoint_harness::*;
use fake_coder::{Failure, FakeCoder, Options};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn shellcheck_passes() {
    let out = Command::new(find_tool("shellcheck"))
        .args(["-s", "sh", SCRIPT])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn layer_ships_script_unit_and_enablement() {
    let root = Path::new(LAYER_ROOTFS);
    let script = fs::metadata(root.join("usr/local/bin/hakim-entrypoint")).unwrap();
    assert!(script.mode() & 0o111 != 0, "script must be executable");
    let unit = fs::read_to_string(root.join("etc/systemd/system/hakim-agent.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/hakim-entrypoint --service",
        "Restart=always",
        "EnvironmentFile=-/usr/lib/hakim/image.env",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line:?}");
    }
    let link = root.join("etc/systemd/system/multi-user.target.wants/hakim-agent.service");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_to_string(&link).unwrap(),
        unit,
        "wants link must resolve to the unit"
    );
    // systemd itself must accept the unit, with the script at its ExecStart path.
    let sb = Sandbox::new();
    write_file(&sb.host("/tmp/hakim-agent.service"), &unit, 0o644);
    let verify = find_tool("systemd-analyze");
    let mut run = sb.spawn(
        &[
            verify.to_str().unwrap(),
            "verify",
            "/tmp/hakim-agent.service",
        ],
        None,
    );
    let status = run
        .wait_timeout(Duration::from_secs(30))
        .expect("systemd-analyze verify hung");
    let log = run.log();
    assert!(
        status.success() && log.trim().is_empty(),
        "systemd-analyze verify:\n{log}"
    );
    let yaml = fs::read_to_string(root.parent().unwrap().join("layer.yaml")).unwrap();
    assert!(yaml.starts_with("description:"), "{yaml}");
}

#[test]
fn env_credentials_start_agent_as_user_and_term_stops_it() {
    scenarios::env_credentials_start_agent_as_user_and_term_stops_it(&Sandbox::new);
}

#[test]
fn unprivileged_start_runs_agent_as_itself() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let mut sb = Sandbox::new();
    sb.env("CODER_AGENT_URL", &server.access_url())
        .env("CODER_AGENT_TOKEN", &token)
        .env("HOME", "/tmp/u")
        .env("USER", "someone");
    // Like `docker run --user 4321:4321`: no root, no passwd entry.
    let run = sb.spawn(
        &[
            "setpriv",
            "--reuid=4321",
            "--regid=4321",
            "--clear-groups",
            "--",
            ENTRYPOINT,
        ],
        None,
    );
    let report = expect_agent(&run, &server, &token);
    let get = |k: &str| report.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(
        (get("uid"), get("user"), get("home"), get("cwd")),
        ("4321", "someone", "/tmp/u", "/tmp/u"),
        "{report:?}"
    );
    assert_eq!(get("token"), token);
    assert_eq!(get("token_env"), "unset");
    assert_eq!(get("token_file_mode"), "600");
    assert!(sb.host("/tmp/hakim-4321/coder").is_file(), "{}", run.log());
    assert_log_clean(&run, &token);
}

#[test]
fn crashed_agent_is_restarted() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let mut sb = Sandbox::new();
    write_file(&sb.host("/home/coder/.fake-agent-crash"), "", 0o644);
    sb.env("CODER_AGENT_URL", &server.access_url())
        .env("CODER_AGENT_TOKEN", &token);
    let run = sb.start(&[]);
    let report = expect_agent(&run, &server, &token);
    assert_default_agent(&report, &token, &server.access_url());
    assert!(
        server.reports()[0].get("event").map(String::as_str) == Some("crash"),
        "{:?}",
        server.reports()
    );
    let log = run.log();
    assert!(
        log.contains("coder agent exited with status 3; restarting in 1s"),
        "{log}"
    );
    assert_eq!(server.downloads(), 1, "a restart must reuse the binary");
}

#[test]
fn token_file_and_trailing_slash_url_with_project_dir() {
    scenarios::token_file_and_trailing_slash_url_with_project_dir(&Sandbox::new);
}

#[test]
fn bootstrap_with_path_prefix() {
    scenarios::bootstrap_with_path_prefix(&Sandbox::new);
}

#[test]
fn server_unavailable_first_then_up() {
    scenarios::server_unavailable_first_then_up(&Sandbox::new);
}

#[test]
fn download_that_is_not_a_binary_is_rejected() {
    let server = FakeCoder::start(Options {
        fail_first: 1,
        failure: Failure::NotABinary,
        ..Options::default()
    });
    let token = new_token();
    let mut sb = Sandbox::new();
    sb.env("CODER_AGENT_URL", &server.access_url())
        .env("CODER_AGENT_TOKEN", &token);
    let run = sb.start(&[]);
    expect_agent(&run, &server, &token);
    assert_eq!(server.downloads(), 2);
    let log = run.log();
    assert!(log.contains("not a working coder binary"), "{log}");
    assert!(log.contains("Coder v2.99.0-hakimfake"), "{log}");
}

#[test]
fn home_volume_with_lost_found_is_not_chowned_recursively() {
    scenarios::home_volume_with_lost_found_is_not_chowned_recursively(&Sandbox::new);
}

#[test]
fn no_credentials_runs_cmd_as_user() {
    scenarios::no_credentials_runs_cmd_as_user(&Sandbox::new);
}

#[test]
fn no_credentials_no_cmd_starts_login_shell() {
    scenarios::no_credentials_no_cmd_starts_login_shell(&Sandbox::new);
}

#[test]
fn connection_refused_is_logged_and_retried() {
    scenarios::connection_refused_is_logged_and_retried(&Sandbox::new);
}

#[test]
fn kept_binary_is_used_while_server_is_down() {
    let token = new_token();
    let mut sb = Sandbox::new();
    sb.env("HAKIM_FALLBACK_AFTER", "2");
    {
        let server = FakeCoder::start(Options::default());
        sb.env("CODER_AGENT_URL", &server.access_url())
            .env("CODER_AGENT_TOKEN", &token);
        let mut run = sb.start(&[]);
        expect_agent(&run, &server, &token);
        run.signal(libc::SIGTERM);
        assert!(run.wait_timeout(Duration::from_secs(5)).is_some());
    }
    let down = FakeCoder::start(Options {
        fail_first: usize::MAX,
        ..Options::default()
    });
    sb.env("CODER_AGENT_URL", &down.access_url());
    let run = sb.start(&[]);
    expect_agent(&run, &down, &token);
    let log = run.log();
    assert!(log.contains("using /var/lib/hakim/coder"), "{log}");
    assert_eq!(down.downloads(), 2, "{log}");
}

#[test]
fn baked_binary_is_used_when_no_download_works() {
    let token = new_token();
    let mut sb = Sandbox::new();
    write_file(
        &sb.host("/usr/local/bin/coder"),
        fake_coder::FAKE_AGENT,
        0o755,
    );
    let down = FakeCoder::start(Options {
        fail_first: usize::MAX,
        ..Options::default()
    });
    sb.env("HAKIM_FALLBACK_AFTER", "1")
        .env("CODER_AGENT_URL", &down.access_url())
        .env("CODER_AGENT_TOKEN", &token);
    let run = sb.start(&[]);
    expect_agent(&run, &down, &token);
    let log = run.log();
    assert!(log.contains("using /usr/local/bin/coder"), "{log}");
}

#[test]
fn wget_is_used_when_curl_is_missing() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let mut sb = Sandbox::new();
    sb.hide_tool("curl");
    sb.env("CODER_AGENT_URL", &server.access_url())
        .env("CODER_AGENT_TOKEN", &token);
    let run = sb.start(&[]);
    expect_agent(&run, &server, &token);
    let download = server
        .paths()
        .into_iter()
        .find(|p| p.contains("/bin/coder-linux-"))
        .unwrap();
    assert!(
        download.contains("Wget/"),
        "not downloaded by GNU wget: {download}"
    );
    assert_log_clean(&run, &token);
}

#[test]
fn busybox_wget_is_used_when_curl_and_wget_are_missing() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let mut sb = Sandbox::new();
    // A static busybox in /usr/local/bin works in any rootfs.
    fs::copy(find_tool("busybox"), sb.host("/usr/local/bin/busybox")).unwrap();
    sb.hide_tool("curl");
    sb.hide_tool("wget");
    sb.env("CODER_AGENT_URL", &server.access_url())
        .env("CODER_AGENT_TOKEN", &token);
    let run = sb.start(&[]);
    expect_agent(&run, &server, &token);
    let download = server
        .paths()
        .into_iter()
        .find(|p| p.contains("/bin/coder-linux-"))
        .unwrap();
    // BusyBox sends a bare "Wget" user agent; GNU wget adds its version.
    assert!(
        download.ends_with(" Wget"),
        "not downloaded by busybox wget: {download}"
    );
    assert_log_clean(&run, &token);
}

#[test]
fn user_is_appended_to_passwd_without_useradd() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let mut sb = Sandbox::new();
    sb.bind("--tmpfs", Path::new(""), "/usr/sbin")
        .env("CODER_USER", "dev")
        .env("CODER_UID", "1234")
        .env("CODER_AGENT_URL", &server.access_url())
        .env("CODER_AGENT_TOKEN", &token);
    let run = sb.start(&[]);
    let report = expect_agent(&run, &server, &token);
    assert_eq!(
        (
            report["uid"].as_str(),
            report["gid"].as_str(),
            report["user"].as_str(),
            report["home"].as_str()
        ),
        ("1234", "1234", "dev", "/home/dev"),
        "{report:?}"
    );
    let passwd = fs::read_to_string(sb.host("/etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("dev:x:1234:1234::/home/dev:")),
        "{passwd}"
    );
    let group = fs::read_to_string(sb.host("/etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "dev:x:1234:"), "{group}");
}

#[test]
fn system_mode_saves_env_file_and_execs_init() {
    scenarios::system_mode_saves_env_file_and_execs_init(&Sandbox::new);
}

#[test]
fn service_reads_credentials_from_pid1_environ() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let mut sb = Sandbox::new();
    let init = fake_init(&sb, false);
    sb.env("container", "lxc")
        .env("CODER_AGENT_URL", &server.access_url())
        .env("CODER_AGENT_TOKEN", &token);
    // Run the stand-in init directly as PID 1, as lxc-start does with /sbin/init.
    fs::copy(&init, sb.host("/usr/local/bin/fake-init")).unwrap();
    let run = sb.spawn(&["/usr/local/bin/fake-init"], None);
    let report = expect_agent(&run, &server, &token);
    assert_default_agent(&report, &token, &server.access_url());
    assert!(
        !sb.host("/etc/hakim/agent.env").exists(),
        "the service must not need the env file"
    );
    assert_log_clean(&run, &token);
}

#[test]
fn service_waits_for_env_file() {
    scenarios::service_waits_for_env_file(&Sandbox::new);
}

#[test]
fn new_token_in_the_start_env_wins_over_the_saved_file() {
    scenarios::new_token_in_the_start_env_wins_over_the_saved_file(&Sandbox::new);
}

#[test]
fn explain_reports_the_decision_without_secrets() {
    scenarios::explain_reports_the_decision_without_secrets(&Sandbox::new);
}
