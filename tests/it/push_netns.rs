//! Pushes to a registry that is not on loopback, inside a private network namespace: the
//! registry's address is a TEST-NET one on a veth pair that only the namespace has, so no
//! packet leaves it. `--plain-http` and `GITHUB_TOKEN` (which hakim uses for ghcr.io only) are
//! exercised the way a user meets them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;

use crate::support::proxy::{BearerMock, Proxy};
use crate::support::registry::TestRegistry;
use crate::support::*;

/// The registry's non-loopback address (TEST-NET-1) inside the namespace.
const ADDR: &str = "192.0.2.1";

/// Run `f` on a thread inside a fresh, unnamed network namespace holding only `lo` and a veth
/// pair with [`ADDR`]. Threads and processes started by `f` inherit it. The namespace vanishes
/// with its last thread, socket and process, so a failing test leaves nothing behind.
fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    require_root();
    require_bin("ip", "iproute2");
    require_bin("unshare", "util-linux");
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            // SAFETY: unshare only changes this thread's own network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) failed (needs root): {}",
                std::io::Error::last_os_error()
            );
            for args in [
                "link set lo up",
                "link add hk0 type veth peer name hk1",
                &format!("addr add {ADDR}/24 dev hk0"),
                "link set hk0 up",
                "link set hk1 up",
            ] {
                run_ok(Command::new("ip").args(args.split(' ')));
            }
            // Evidence the namespace is private: no route but our own test net.
            let routes = run_ok(Command::new("ip").args(["-4", "route", "show"]));
            let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
            assert!(
                !routes.contains("default") && routes.contains("192.0.2.0/24"),
                "the namespace has unexpected routes:\n{routes}"
            );
            f()
        });
        worker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `cmd` run in a private mount namespace whose `/etc/hosts` is `hosts`, so a name like
/// ghcr.io resolves to [`ADDR`] for this process only.
fn with_hosts(cmd: &Command, hosts: &std::path::Path) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        ])
        .arg(hosts)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The digest hakim reported for its single pushed image.
fn reported_digest(out: &Output) -> String {
    let reports = json(out);
    let reports = reports.as_array().expect("push --json prints an array");
    assert_eq!(reports.len(), 1, "{reports:?}");
    reports[0]["digest"].as_str().unwrap().to_string()
}

#[test]
fn plain_http_is_needed_for_a_registry_off_loopback() {
    let s = Scratch::fixture("basic");
    in_netns(|| {
        let reg = TestRegistry::open();
        let proxy = Proxy::listening_on(&format!("{ADDR}:0"), reg.addr, None);
        let target = format!("{}/team", proxy.host());
        assert!(target.starts_with(ADDR), "{target}");

        // Off loopback hakim speaks HTTPS unless told otherwise; the plain HTTP server fails it.
        let out = s
            .hakim()
            .args(["push", "base", "--json", "--registry", &target])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "push over HTTPS succeeded: {err}");
        assert!(
            err.contains(&proxy.host()) && (err.contains("tls") || err.contains("https")),
            "the error should name the registry and the TLS/HTTPS failure:\n{err}"
        );
        // The error says what to do (this proxy cuts the handshake short, which is retried as
        // a network fault would be; a plain-text answer is not: see the registry unit tests).
        assert!(
            err.contains("--plain-http"),
            "no hint at --plain-http:\n{err}"
        );
        assert!(
            !proxy.log().iter().any(|r| r.method == "PUT"),
            "nothing may be written over a failed HTTPS connection: {:?}",
            proxy.log()
        );

        let out = run_ok(s.hakim().args([
            "push",
            "base",
            "--json",
            "--plain-http",
            "--registry",
            &target,
        ]));
        let digest = reported_digest(&out);
        let log = proxy.log();
        assert!(
            log.iter()
                .any(|r| r.manifest_put() == Some("latest") && r.path.contains("/team/")),
            "the manifest was not PUT through {ADDR}: {log:?}"
        );
        // skopeo (TLS verification off, so it may fall back to HTTP) reads the tag back.
        let (_, remote) = crate::support::skopeo::raw(&format!("{target}/test-base:latest"), None);
        assert_eq!(remote.oci(), digest);
    });
}

#[test]
fn github_token_from_the_environment_authenticates_to_ghcr() {
    let s = Scratch::fixture("basic");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{ADDR} ghcr.io\n")).unwrap();
    // A docker config with other, wrong credentials for ghcr.io: GITHUB_TOKEN must win over it.
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#,
            b64("config-user:config-pass-9f3")
        ),
    )
    .unwrap();
    let token = "ghp_envtoken5c1e7a";
    in_netns(|| {
        let reg = TestRegistry::open();
        let proxy = Proxy::listening_on(
            &format!("{ADDR}:80"),
            reg.addr,
            Some(BearerMock {
                username: "octo-actor".into(),
                password: token.into(),
                token: "bearer-from-mock".into(),
            }),
        );
        let push = |token: &str, explicit: Option<&str>| {
            let mut c = s.hakim();
            c.args([
                "push",
                "base",
                "--json",
                "--plain-http",
                "--registry",
                "ghcr.io/team",
            ])
            .env("GITHUB_TOKEN", token)
            .env("GITHUB_ACTOR", "octo-actor")
            .env("DOCKER_CONFIG", &docker);
            if explicit.is_some() {
                c.args(["--username", "octo-actor", "--password-stdin"]);
            }
            let mut child = with_hosts(&c, &hosts)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            if let Some(p) = explicit {
                stdin.write_all(format!("{p}\n").as_bytes()).unwrap();
            }
            drop(stdin);
            child.wait_with_output().unwrap()
        };
        let basic = |password: &str| format!("Basic {}", b64(&format!("octo-actor:{password}")));

        // The token comes only from the environment; it beats the docker config's entry.
        let out = push(token, None);
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(
            !all.contains(token),
            "the token leaked into hakim's output:\n{all}"
        );
        let digest = reported_digest(&out);
        let log = proxy.log();
        let token_calls: Vec<_> = log.iter().filter(|r| r.path == "/token").collect();
        assert!(
            !token_calls.is_empty()
                && token_calls
                    .iter()
                    .all(|r| r.authorization.as_deref() == Some(basic(token).as_str())),
            "the token service did not get GITHUB_ACTOR:GITHUB_TOKEN as Basic: {token_calls:?}"
        );
        assert!(
            log.iter().any(|r| r.manifest_put() == Some("latest")
                && r.authorization.as_deref() == Some("Bearer bearer-from-mock")),
            "the manifest was not PUT with the exchanged bearer token: {log:?}"
        );
        // Read back from the registry itself, behind the front.
        let (_, remote) =
            crate::support::skopeo::raw(&format!("{}/team/test-base:latest", reg.host()), None);
        assert_eq!(remote.oci(), digest);

        // --username/--password-stdin beats GITHUB_TOKEN: a wrong token in the environment is
        // not used when the right password comes on stdin.
        proxy.clear();
        let out = push("ghp_wrong_env_token_77", Some(token));
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(
            !all.contains(token) && !all.contains("ghp_wrong_env_token_77"),
            "{all}"
        );
        let log = proxy.log();
        assert!(
            log.iter()
                .any(|r| r.path == "/token"
                    && r.authorization.as_deref() == Some(basic(token).as_str())),
            "the explicit credentials did not reach the token service: {log:?}"
        );
        assert!(
            !log.iter().any(|r| r
                .authorization
                .as_deref()
                .is_some_and(|a| a == basic("ghp_wrong_env_token_77"))),
            "GITHUB_TOKEN was used although explicit credentials were given: {log:?}"
        );
    });
}
