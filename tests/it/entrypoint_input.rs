//! Hostile values handed to the entrypoint: user names, project dirs, line breaks in
//! credentials, CRLF env files and a swapped bootstrap value (issue 13, item 2).
//!
//! Same bubblewrap harness as `tests/entrypoint.rs`: root, bwrap, a fake Coder server on
//! 127.0.0.1.

use crate::support::entrypoint_harness::*;
use crate::support::fake_coder;
use fake_coder::{FakeCoder, Options};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// Runs the entrypoint (app mode) and expects it to refuse: a failing exit, `why` in the
/// log, no agent download, no token in the log.
fn expect_refusal(sb: &Sandbox, server: &FakeCoder, token: &str, why: &str) -> String {
    let mut run = sb.start(&[]);
    let status = run
        .wait_timeout(Duration::from_secs(30))
        .expect("the entrypoint should have refused and exited");
    let log = run.log();
    assert!(!status.success(), "expected a refusal:\n{log}");
    assert!(log.contains(why), "log lacks {why:?}:\n{log}");
    assert!(!log.contains(token), "token leaked into the log:\n{log}");
    assert_eq!(server.downloads(), 0, "nothing may start: {log}");
    log
}

#[test]
fn bad_coder_user_is_refused_before_anything_is_created_or_chowned() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    for (name, without_useradd) in [
        ("..", false),
        (".", false),
        ("..", true),
        ("-o", false),
        ("Admin", false),
        ("a:b", true),
    ] {
        let mut sb = Sandbox::new();
        if without_useradd {
            // The fallback that writes /etc/passwd itself.
            sb.bind("--tmpfs", Path::new(""), "/usr/sbin");
        }
        sb.env("CODER_USER", name)
            .env("CODER_AGENT_URL", &server.access_url())
            .env("CODER_AGENT_TOKEN", &token);
        let passwd = fs::read_to_string(sb.host("/etc/passwd")).unwrap();
        let group = fs::read_to_string(sb.host("/etc/group")).unwrap();
        expect_refusal(&sb, &server, &token, "invalid CODER_USER");
        assert_eq!(
            fs::read_to_string(sb.host("/etc/passwd")).unwrap(),
            passwd,
            "{name}: /etc/passwd changed"
        );
        assert_eq!(
            fs::read_to_string(sb.host("/etc/group")).unwrap(),
            group,
            "{name}: /etc/group changed"
        );
        let home = fs::metadata(sb.host("/home")).unwrap();
        assert_eq!(home.uid(), 0, "{name}: /home was chowned");
    }
}

#[test]
fn relative_or_dotdot_project_dir_is_refused() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    for dir in ["work", "/home/coder/../../etc", "/home/coder/./x"] {
        let mut sb = Sandbox::new();
        sb.env("CODER_PROJECT_DIR", dir)
            .env("CODER_AGENT_URL", &server.access_url())
            .env("CODER_AGENT_TOKEN", &token);
        expect_refusal(&sb, &server, &token, "invalid CODER_PROJECT_DIR");
    }
}

#[test]
fn line_breaks_in_credentials_are_refused() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let url = server.access_url();
    let injected_url = format!("{url}\nCODER_USER=root");
    let cases = [
        ("CODER_AGENT_URL", injected_url.as_str(), token.clone()),
        ("CODER_AGENT_URL", &format!("{url}\r"), token.clone()),
        ("CODER_AGENT_URL", &url, format!("{token}\nCODER_UID=0")),
    ];
    for (key, value, tok) in cases {
        let mut sb = Sandbox::new();
        sb.env(key, value).env("CODER_AGENT_TOKEN", &tok);
        expect_refusal(
            &sb,
            &server,
            &token,
            "contains a newline or carriage return",
        );
    }
    // The same URL in an env file, with a CR inside a line.
    let sb = Sandbox::new();
    write_file(
        &sb.host("/etc/hakim/agent.env"),
        &format!("CODER_AGENT_URL={url}\rCODER_USER=root\nCODER_AGENT_TOKEN={token}\n"),
        0o600,
    );
    expect_refusal(
        &sb,
        &server,
        &token,
        "/etc/hakim/agent.env: CODER_AGENT_URL",
    );
    // And inside a bootstrap value.
    let mut sb = Sandbox::new();
    sb.env(
        "CODER_AGENT_BOOTSTRAP",
        &b64(&format!("{injected_url}|{token}")),
    );
    expect_refusal(
        &sb,
        &server,
        &token,
        "contains a newline or carriage return",
    );
}

#[test]
fn newline_in_url_never_reaches_the_saved_env_file() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let mut sb = Sandbox::new();
    let init = fake_init(&sb, true);
    let init_target = sb.resolve_inside("/sbin/init");
    sb.bind("--ro-bind", &init, &init_target)
        .env("container", "lxc")
        .env(
            "CODER_AGENT_URL",
            &format!("{}\nCODER_USER=root", server.access_url()),
        )
        .env("CODER_AGENT_TOKEN", &token);
    let mut run = sb.start(&[]);
    let status = run
        .wait_timeout(Duration::from_secs(30))
        .expect("system mode should refuse and exit");
    let log = run.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("env: CODER_AGENT_URL contains a newline"),
        "{log}"
    );
    assert!(!log.contains("fake-init"), "init must not boot:\n{log}");
    assert!(
        !sb.host("/etc/hakim/agent.env").exists(),
        "agent.env was written"
    );
}

#[test]
fn crlf_env_file_is_read_like_an_lf_one() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let sb = Sandbox::new();
    write_file(
        &sb.host("/etc/hakim/agent.env"),
        &format!(
            "# saved on Windows\r\nCODER_AGENT_URL={}\r\nexport CODER_AGENT_TOKEN=\"{token}\"\r\n",
            server.access_url()
        ),
        0o600,
    );
    let init = fake_init(&sb, false);
    fs::copy(&init, sb.host("/usr/local/bin/fake-init")).unwrap();
    let run = sb.spawn(&["/usr/local/bin/fake-init"], None);
    let report = expect_agent(&run, &server, &token);
    assert_default_agent(&report, &token, &server.access_url());
    assert_log_clean(&run, &token);
}

#[test]
fn swapped_bootstrap_is_refused_without_printing_the_token() {
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let mut sb = Sandbox::new();
    sb.env(
        "CODER_AGENT_BOOTSTRAP",
        &b64(&format!("{token}|{}", server.access_url())),
    );
    expect_refusal(&sb, &server, &token, "holds \"token|url\"");
    // A token passed as the URL is not echoed either.
    let mut sb = Sandbox::new();
    sb.env("CODER_AGENT_URL", &token)
        .env("CODER_AGENT_TOKEN", &token);
    expect_refusal(&sb, &server, &token, "must start with http:// or https://");
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
