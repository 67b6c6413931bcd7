//! The bubblewrap harness for the entrypoint script and the scenarios shared by
//! `tests/it/entrypoint.rs` (script from the repository over `HAKIM_TEST_ROOTFS` or the built hakim-base rootfs) and
//! `tests/it/entrypoint_image.rs` (the script inside a built hakim-base rootfs).
//!

use crate::support::fake_coder::{Failure, FakeCoder, Options, Report};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/layers/entrypoint/rootfs/usr/local/bin/hakim-entrypoint"
);
pub const LAYER_ROOTFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/layers/entrypoint/rootfs");
pub const ENTRYPOINT: &str = "/usr/local/bin/hakim-entrypoint";
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const AGENT_WAIT: Duration = Duration::from_secs(40);

pub fn find_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is required by the entrypoint tests but was not found (apt install {name})")
        })
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "entrypoint tests must run as root (bwrap binds, chown, useradd)"
    );
}

/// `HAKIM_TEST_ROOTFS`, else the hakim-base image this test run built: the scenarios run on the
/// userland the script ships with, never silently on whatever the host has.
pub fn rootfs() -> PathBuf {
    std::env::var_os("HAKIM_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::image::unpacked_base().to_path_buf())
}

/// A distinctive token per test, so scans of logs and /proc cannot match by accident.
pub fn new_token() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "hkTok{}x{}x{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn coder_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armv7",
        other => panic!("no Coder agent build for {other}"),
    }
}

pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn write_file(path: &Path, content: &str, mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A throwaway root for one or more runs of the entrypoint.
pub struct Sandbox {
    /// Host directory holding the writable parts of the sandbox.
    pub dir: tempfile::TempDir,
    /// The read-only root.
    pub rootfs: PathBuf,
    env: Vec<(String, String)>,
    binds: Vec<(String, PathBuf, String)>,
}

impl Sandbox {
    /// The repository's script over `HAKIM_TEST_ROOTFS` (default: the built hakim-base rootfs).
    pub fn new() -> Sandbox {
        Sandbox::on(rootfs(), Path::new(SCRIPT))
    }

    /// `script` as /usr/local/bin/hakim-entrypoint over the read-only `rootfs`.
    pub fn on(rootfs: PathBuf, script: &Path) -> Sandbox {
        require_root();
        find_tool("bwrap");
        assert!(
            rootfs.join("etc").is_dir(),
            "HAKIM_TEST_ROOTFS={} has no etc/",
            rootfs.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(rootfs.join("etc"))
            .arg(dir.path().join("etc"))
            .status()
            .unwrap();
        assert!(status.success(), "copying {}/etc failed", rootfs.display());
        for d in [
            "home", "var/lib", "var/log", "var/tmp", "run/lock", "tmp", "ulb",
        ] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        fs::set_permissions(dir.path().join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::symlink("/run", dir.path().join("var/run")).unwrap();
        std::os::unix::fs::symlink("/run/lock", dir.path().join("var/lock")).unwrap();
        fs::copy(script, dir.path().join("ulb/hakim-entrypoint"))
            .unwrap_or_else(|e| panic!("copying {}: {e}", script.display()));
        fs::set_permissions(
            dir.path().join("ulb/hakim-entrypoint"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        Sandbox {
            dir,
            rootfs,
            env: vec![
                ("PATH".into(), PATH.into()),
                ("HAKIM_RETRY_MAX".into(), "1".into()),
            ],
            binds: Vec::new(),
        }
    }

    /// Host path of a path inside the sandbox's writable areas.
    pub fn host(&self, inside: &str) -> PathBuf {
        let rel = inside.trim_start_matches('/');
        let mapped = if let Some(rest) = rel.strip_prefix("usr/local/bin") {
            format!("ulb{rest}")
        } else {
            rel.to_string()
        };
        self.dir.path().join(mapped)
    }

    pub fn env(&mut self, key: &str, value: &str) -> &mut Sandbox {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn bind(&mut self, kind: &str, host: &Path, inside: &str) -> &mut Sandbox {
        self.binds
            .push((kind.into(), host.to_path_buf(), inside.into()));
        self
    }

    /// Resolves symlinks of `path` inside the rootfs (bwrap cannot bind onto a symlink).
    pub fn resolve_inside(&self, path: &str) -> String {
        let out = Command::new(find_tool("bwrap"))
            .arg("--ro-bind")
            .arg(&self.rootfs)
            .args(["/", "readlink", "-f", path])
            .env_clear()
            .env("PATH", PATH)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "readlink -f {path} in the rootfs failed"
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Makes `name` unusable in the sandbox: a non-executable empty file over its binary.
    pub fn hide_tool(&mut self, name: &str) -> &mut Sandbox {
        let out = Command::new(find_tool("bwrap"))
            .arg("--ro-bind")
            .arg(&self.rootfs)
            .args(["/", "sh", "-c", &format!("command -v {name}")])
            .env_clear()
            .env("PATH", PATH)
            .output()
            .unwrap();
        let inside = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(inside.starts_with('/'), "{name} not found in the rootfs");
        let inside = self.resolve_inside(&inside);
        let blank = self.dir.path().join(format!("hidden-{name}"));
        write_file(&blank, "", 0o644);
        self.bind("--ro-bind", &blank, &inside)
    }

    /// Runs the entrypoint with `args` as PID 1.
    pub fn start(&self, args: &[&str]) -> Running {
        let mut argv = vec![ENTRYPOINT];
        argv.extend_from_slice(args);
        self.spawn(&argv, None)
    }

    /// Runs `argv` as PID 1; secrets go through the environment, never bwrap's argv.
    pub fn spawn(&self, argv: &[&str], stdin: Option<&str>) -> Running {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let d = self.dir.path();
        let log = d.join(format!("log-{}", RUNS.fetch_add(1, Ordering::SeqCst)));
        let out = fs::File::create(&log).unwrap();
        let mut cmd = Command::new(find_tool("bwrap"));
        cmd.arg("--ro-bind").arg(&self.rootfs).arg("/");
        for (src, dst) in [
            ("etc", "/etc"),
            ("home", "/home"),
            ("var", "/var"),
            ("run", "/run"),
            ("tmp", "/tmp"),
            ("ulb", "/usr/local/bin"),
        ] {
            cmd.arg("--bind").arg(d.join(src)).arg(dst);
        }
        cmd.args(["--proc", "/proc", "--dev", "/dev"]);
        for (kind, host, inside) in &self.binds {
            if kind == "--tmpfs" {
                cmd.arg(kind).arg(inside);
            } else {
                cmd.arg(kind).arg(host).arg(inside);
            }
        }
        cmd.args([
            "--unshare-pid",
            "--as-pid-1",
            "--unshare-ipc",
            "--unshare-uts",
            "--die-with-parent",
            "--chdir",
            "/",
        ]);
        cmd.args(argv);
        cmd.env_clear();
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        match stdin {
            Some(text) => {
                let p = d.join("stdin");
                fs::write(&p, text).unwrap();
                cmd.stdin(fs::File::open(p).unwrap());
            }
            None => {
                cmd.stdin(Stdio::null());
            }
        }
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        let child = cmd.spawn().expect("spawn bwrap");
        Running { child, log }
    }
}

/// One bwrap run; killed when dropped.
pub struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Host pid of the sandbox's PID 1 (bwrap's child with --as-pid-1).
    pub fn pid1(&self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = processes()
                .into_iter()
                .find(|p| p.ppid == self.child.id() as i32)
            {
                return p.pid;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox PID 1 not found; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.pid1();
        // SAFETY: plain kill(2) on a pid we just looked up.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid}");
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Kill the sandbox's PID 1 first: a PID 1 that changed uid (setpriv) lost bwrap's
        // --die-with-parent death signal and would outlive bwrap.
        for p in processes() {
            if p.ppid == self.child.id() as i32 {
                // SAFETY: kill(2) on a child of our own bwrap.
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One process as read from /proc.
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub comm: String,
}

pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = rest.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
        out.push(Proc {
            pid,
            ppid,
            state,
            comm,
        });
    }
    out
}

/// Command lines (of any process on the host) that contain `needle`.
pub fn cmdlines_containing(needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = fs::read(entry.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            if line.contains(needle) {
                hits.push(format!("{}: {line}", entry.file_name().to_string_lossy()));
            }
        }
    }
    hits
}

/// Scans every process's command line for a secret on a thread, until stopped.
pub struct LeakScanner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::collections::BTreeSet<String>>>,
}

impl LeakScanner {
    pub fn start(secret: &str) -> LeakScanner {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, secret) = (stop.clone(), secret.to_string());
        let thread = std::thread::spawn(move || {
            let mut leaks = std::collections::BTreeSet::new();
            while !flag.load(Ordering::SeqCst) {
                leaks.extend(cmdlines_containing(&secret));
                std::thread::sleep(Duration::from_millis(2));
            }
            leaks
        });
        LeakScanner {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> std::collections::BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Waits for the agent's start report while scanning every command line for the token.
pub fn expect_agent(run: &Running, server: &FakeCoder, token: &str) -> Report {
    let scanner = LeakScanner::start(token);
    let report = server.wait_report("start", AGENT_WAIT, || {});
    let leaks = scanner.finish();
    let report = report.unwrap_or_else(|| {
        panic!(
            "the agent never reported; requests: {:?}; log:\n{}",
            server.paths(),
            run.log()
        )
    });
    assert!(leaks.is_empty(), "token on a command line: {leaks:?}");
    report
}

/// Waits for the agent's start report while scanning all command lines for the token.
/// Allows 90 s: real images boot systemd first, on a shared machine.
pub fn agent_report(
    server: &FakeCoder,
    token: &str,
    what: &str,
    diag: impl Fn() -> String,
) -> Report {
    let scanner = LeakScanner::start(token);
    let report = server.wait_report("start", Duration::from_secs(90), || {});
    let leaks = scanner.finish();
    let report = report.unwrap_or_else(|| {
        panic!(
            "{what}: the agent never reported; requests: {:?}\n{}",
            server.paths(),
            diag()
        )
    });
    assert!(
        leaks.is_empty(),
        "{what}: token on a command line: {leaks:?}"
    );
    report
}

/// What every agent start must look like for the default user.
pub fn assert_default_agent(report: &Report, token: &str, url: &str) {
    let get = |k: &str| report.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(get("argv"), "agent", "{report:?}");
    assert_eq!(get("uid"), "1000", "{report:?}");
    assert_eq!(get("gid"), "1000", "{report:?}");
    assert_eq!(get("user"), "coder", "{report:?}");
    assert_eq!(get("home"), "/home/coder", "{report:?}");
    assert_eq!(get("url"), url, "{report:?}");
    assert_eq!(get("auth"), "token", "{report:?}");
    assert_eq!(get("token"), token, "agent got the wrong token");
    assert_eq!(
        get("token_env"),
        "unset",
        "token must come as a file, not env"
    );
    assert_eq!(
        get("bootstrap_env"),
        "",
        "bootstrap must not reach the agent"
    );
    assert_eq!(get("token_file_mode"), "600", "{report:?}");
    assert_eq!(get("token_file_owner"), "1000", "{report:?}");
    assert!(get("path").contains("/usr/bin"), "PATH not set: {report:?}");
}

pub fn assert_log_clean(run: &Running, token: &str) {
    let log = run.log();
    assert!(!log.contains(token), "token leaked into the log:\n{log}");
}

/// An /sbin/init stand-in that starts the agent service like systemd would (clean env).
pub fn fake_init(sb: &Sandbox, exec_service: bool) -> PathBuf {
    let service = format!("env -i PATH={PATH} HAKIM_RETRY_MAX=1 {ENTRYPOINT} --service");
    let body = if exec_service {
        format!("exec {service}")
    } else {
        format!("{service} &\nwait")
    };
    let path = sb.dir.path().join("fake-init");
    write_file(
        &path,
        &format!(
            "#!/bin/sh\necho \"fake-init: pid=$$ token_env=${{CODER_AGENT_TOKEN:+set}} bootstrap_env=${{CODER_AGENT_BOOTSTRAP:+set}}\"\n{body}\n"
        ),
        0o755,
    );
    path
}

/// Scenarios shared by the host-root and the built-image test files.
pub mod scenarios {
    use super::*;

    pub fn env_credentials_start_agent_as_user_and_term_stops_it(new: &dyn Fn() -> Sandbox) {
        let server = FakeCoder::start(Options::default());
        let token = new_token();
        let mut sb = new();
        sb.env("CODER_AGENT_URL", &server.access_url())
            .env("CODER_AGENT_TOKEN", &token);
        let mut run = sb.start(&[]);
        let report = expect_agent(&run, &server, &token);
        assert_default_agent(&report, &token, &server.access_url());
        assert_eq!(report["cwd"], "/home/coder");
        let passwd = fs::read_to_string(sb.host("/etc/passwd")).unwrap();
        assert!(
            passwd.lines().any(|l| l.starts_with("coder:x:1000:1000:")),
            "coder user not created:\n{passwd}"
        );
        let home = fs::metadata(sb.host("/home/coder")).unwrap();
        assert_eq!((home.uid(), home.gid()), (1000, 1000));
        let kept = fs::metadata(sb.host("/var/lib/hakim/coder")).unwrap();
        assert!(
            kept.mode() & 0o111 != 0,
            "last good binary must be kept executable"
        );
        assert_eq!(
            server.paths()[0].split(' ').nth(1).unwrap(),
            format!("/bin/coder-linux-{}", coder_arch())
        );

        // The agent leaves an orphan `sleep` behind; PID 1 (the script) must adopt and reap it.
        let pid1 = run.pid1();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes()
            .iter()
            .any(|p| p.ppid == pid1 && p.comm == "sleep")
        {
            assert!(
                Instant::now() < deadline,
                "orphan was never reparented to PID 1"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes()
            .iter()
            .any(|p| p.ppid == pid1 && p.comm == "sleep")
        {
            assert!(Instant::now() < deadline, "orphan never went away");
            std::thread::sleep(Duration::from_millis(50));
        }
        let zombies: Vec<i32> = processes()
            .iter()
            .filter(|p| p.ppid == pid1 && p.state == 'Z')
            .map(|p| p.pid)
            .collect();
        assert!(zombies.is_empty(), "PID 1 left zombies: {zombies:?}");

        run.signal(libc::SIGTERM);
        // Only bounds the wait: the evidence is the agent's report of SIGTERM and the exit code.
        let status = run.wait_timeout(Duration::from_secs(60));
        assert!(
            status.is_some(),
            "entrypoint did not exit within 60s of SIGTERM; log:\n{}",
            run.log()
        );
        assert!(
            server
                .wait_report("term", Duration::from_secs(2), || {})
                .is_some(),
            "the agent never got SIGTERM; log:\n{}",
            run.log()
        );
        assert!(status.unwrap().success(), "log:\n{}", run.log());
        assert_log_clean(&run, &token);
    }

    pub fn token_file_and_trailing_slash_url_with_project_dir(new: &dyn Fn() -> Sandbox) {
        let server = FakeCoder::start(Options::default());
        let token = new_token();
        let mut sb = new();
        write_file(
            &sb.host("/run/secrets/agent-token"),
            &format!("{token}\n"),
            0o400,
        );
        let url = format!("{}/", server.access_url());
        sb.env("CODER_AGENT_URL", &url)
            .env("CODER_AGENT_TOKEN_FILE", "/run/secrets/agent-token")
            .env("CODER_PROJECT_DIR", "/home/coder/src/app");
        let run = sb.start(&[]);
        let report = expect_agent(&run, &server, &token);
        assert_default_agent(&report, &token, &url);
        assert_eq!(report["cwd"], "/home/coder/src/app");
        for d in ["/home/coder/src", "/home/coder/src/app"] {
            let m = fs::metadata(sb.host(d)).unwrap();
            assert_eq!((m.uid(), m.gid()), (1000, 1000), "{d}");
        }
        assert!(
            server
                .paths()
                .iter()
                .any(|p| p.starts_with(&format!("GET /bin/coder-linux-{} ", coder_arch()))),
            "trailing slash not joined: {:?}",
            server.paths()
        );
        assert_log_clean(&run, &token);
    }

    pub fn bootstrap_with_path_prefix(new: &dyn Fn() -> Sandbox) {
        use base64::Engine;
        let server = FakeCoder::start(Options {
            prefix: "/coder".into(),
            ..Options::default()
        });
        let token = new_token();
        let url = format!("{}/", server.access_url());
        let bootstrap = base64::engine::general_purpose::STANDARD.encode(format!("{url}|{token}"));
        let mut sb = new();
        sb.env("CODER_AGENT_BOOTSTRAP", &bootstrap);
        let run = sb.start(&[]);
        let report = expect_agent(&run, &server, &token);
        assert_default_agent(&report, &token, &url);
        let want = format!("GET /coder/bin/coder-linux-{} ", coder_arch());
        assert!(
            server.paths().iter().any(|p| p.starts_with(&want)),
            "prefix not kept: {:?}",
            server.paths()
        );
        let log = run.log();
        assert!(!log.contains(&bootstrap), "bootstrap leaked:\n{log}");
        assert_log_clean(&run, &token);
    }

    pub fn server_unavailable_first_then_up(new: &dyn Fn() -> Sandbox) {
        let server = FakeCoder::start(Options {
            fail_first: 2,
            failure: Failure::Unavailable,
            ..Options::default()
        });
        let token = new_token();
        let mut sb = new();
        sb.env("CODER_AGENT_URL", &server.access_url())
            .env("CODER_AGENT_TOKEN", &token);
        let run = sb.start(&[]);
        let report = expect_agent(&run, &server, &token);
        assert_default_agent(&report, &token, &server.access_url());
        assert_eq!(server.downloads(), 3);
        let log = run.log();
        assert!(
            log.contains("attempt 1:") && log.contains("attempt 2:") && log.contains("503"),
            "{log}"
        );
        assert!(!log.contains("attempt 3:"), "{log}");
        assert_log_clean(&run, &token);
    }

    pub fn home_volume_with_lost_found_is_not_chowned_recursively(new: &dyn Fn() -> Sandbox) {
        let server = FakeCoder::start(Options::default());
        let token = new_token();
        let mut sb = new();
        let vol = sb.dir.path().join("homevol");
        fs::create_dir_all(vol.join("lost+found")).unwrap();
        fs::set_permissions(vol.join("lost+found"), fs::Permissions::from_mode(0o700)).unwrap();
        write_file(&vol.join("lost+found/#1234"), "orphaned inode", 0o600);
        write_file(&vol.join("root-file"), "keep me", 0o644);
        let vol_host = vol.clone();
        sb.bind("--bind", &vol_host, "/home/coder")
            .env("CODER_AGENT_URL", &server.access_url())
            .env("CODER_AGENT_TOKEN", &token);
        let run = sb.start(&[]);
        let report = expect_agent(&run, &server, &token);
        assert_default_agent(&report, &token, &server.access_url());
        assert_eq!(report["cwd"], "/home/coder");
        let m = fs::metadata(&vol).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (1000, 1000),
            "home dir itself must be owned by the user"
        );
        let lf = fs::metadata(vol.join("lost+found")).unwrap();
        assert_eq!(
            (lf.uid(), lf.mode() & 0o7777),
            (0, 0o700),
            "lost+found changed"
        );
        assert_eq!(fs::metadata(vol.join("lost+found/#1234")).unwrap().uid(), 0);
        assert_eq!(fs::metadata(vol.join("root-file")).unwrap().uid(), 0);
        assert_eq!(
            fs::metadata(vol.join(".profile")).unwrap().uid(),
            1000,
            "skeleton files should be seeded into an empty home"
        );
    }

    pub fn no_credentials_runs_cmd_as_user(new: &dyn Fn() -> Sandbox) {
        let sb = new();
        let mut run = sb.start(&[
            "sh",
            "-c",
            "echo cmd-ran uid=$(id -u) user=$USER home=$HOME pwd=$PWD",
        ]);
        let status = run
            .wait_timeout(Duration::from_secs(30))
            .expect("CMD did not finish");
        let log = run.log();
        assert!(status.success(), "{log}");
        assert!(
            log.contains("cmd-ran uid=1000 user=coder home=/home/coder pwd=/home/coder"),
            "{log}"
        );
    }

    pub fn no_credentials_no_cmd_starts_login_shell(new: &dyn Fn() -> Sandbox) {
        let sb = new();
        let mut run = sb.spawn(
            &[ENTRYPOINT],
            Some("echo shell-ran uid=$(id -u) home=$HOME\nexit 0\n"),
        );
        let status = run
            .wait_timeout(Duration::from_secs(30))
            .expect("login shell did not finish");
        let log = run.log();
        assert!(status.success(), "{log}");
        assert!(log.contains("shell-ran uid=1000 home=/home/coder"), "{log}");
    }

    pub fn connection_refused_is_logged_and_retried(new: &dyn Fn() -> Sandbox) {
        let token = new_token();
        let url = format!("http://127.0.0.1:{}", closed_port());
        let mut sb = new();
        // Backoff 1 s, 2 s, then 4 s: the last sleep is long enough to see that SIGTERM cuts it.
        sb.env("CODER_AGENT_URL", &url)
            .env("CODER_AGENT_TOKEN", &token)
            .env("HAKIM_RETRY_MAX", "30");
        let mut run = sb.start(&[]);
        let log = run.wait_log("attempt 3:", Duration::from_secs(30));
        assert!(
            log.contains("retrying in 4s"),
            "backoff does not grow:\n{log}"
        );
        assert!(
            log.contains(&format!("{url}/bin/coder-linux-{}", coder_arch())),
            "{log}"
        );
        assert!(
            log.contains("Failed to connect") || log.contains("refused"),
            "no clear connection error:\n{log}"
        );
        assert!(
            run.wait_timeout(Duration::from_millis(200)).is_none(),
            "entrypoint gave up instead of retrying:\n{log}"
        );
        assert!(cmdlines_containing(&token).is_empty());
        // Bounded log rate: one line per attempt.
        let lines = log.lines().filter(|l| l.contains("attempt ")).count();
        let attempts = log.matches("attempt ").count();
        assert_eq!(lines, attempts, "{log}");
        // SIGTERM while waiting between attempts stops at once: within the 4 s sleep it cuts,
        // and with no further attempt logged.
        run.signal(libc::SIGTERM);
        let status = run
            .wait_timeout(Duration::from_secs(3))
            .expect("SIGTERM during retries did not cut the 4s backoff");
        assert!(!run.log().contains("attempt 4:"), "{}", run.log());
        assert_eq!(status.code(), Some(143), "{}", run.log());
        assert_log_clean(&run, &token);
    }

    pub fn system_mode_saves_env_file_and_execs_init(new: &dyn Fn() -> Sandbox) {
        let server = FakeCoder::start(Options::default());
        let token = new_token();
        let mut sb = new();
        assert!(
            sb.rootfs.join("sbin/init").exists(),
            "rootfs has no /sbin/init to stand in for"
        );
        let init = fake_init(&sb, true);
        let init_target = sb.resolve_inside("/sbin/init");
        sb.bind("--ro-bind", &init, &init_target)
            .env("container", "lxc")
            .env("CODER_AGENT_URL", &server.access_url())
            .env("CODER_AGENT_TOKEN", &token);
        let run = sb.start(&[]);
        let report = expect_agent(&run, &server, &token);
        assert_default_agent(&report, &token, &server.access_url());
        let log = run.log();
        assert!(
            log.contains("fake-init: pid=1 token_env= bootstrap_env="),
            "init must be PID 1 without the token in its env:\n{log}"
        );
        let env_file = sb.host("/etc/hakim/agent.env");
        let m = fs::metadata(&env_file).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));
        let content = fs::read_to_string(&env_file).unwrap();
        assert!(
            content
                .lines()
                .any(|l| l == format!("CODER_AGENT_URL={}", server.access_url())),
            "{content}"
        );
        assert_log_clean(&run, &token);
    }

    pub fn service_waits_for_env_file(new: &dyn Fn() -> Sandbox) {
        let server = FakeCoder::start(Options::default());
        let token = new_token();
        let sb = new();
        let init = fake_init(&sb, false);
        fs::copy(&init, sb.host("/usr/local/bin/fake-init")).unwrap();
        let run = sb.spawn(&["/usr/local/bin/fake-init"], None);
        run.wait_log("waiting for /etc/hakim/agent.env", Duration::from_secs(20));
        write_file(
            &sb.host("/etc/hakim/agent.env"),
            &format!(
                "# pushed by the host\nCODER_AGENT_URL=\"{}\"\nexport CODER_AGENT_TOKEN='{token}'\n",
                server.access_url()
            ),
            0o600,
        );
        let report = expect_agent(&run, &server, &token);
        assert_default_agent(&report, &token, &server.access_url());
        assert_log_clean(&run, &token);
    }

    /// A start with a new token (the provider rewrote the CT env) must not use the token an
    /// earlier start saved: as PID 1 (system mode) and as the service reading PID 1's env.
    pub fn new_token_in_the_start_env_wins_over_the_saved_file(new: &dyn Fn() -> Sandbox) {
        let stale = |sb: &Sandbox, server: &FakeCoder| {
            write_file(
                &sb.host("/etc/hakim/agent.env"),
                &format!(
                    "CODER_AGENT_URL={}\nCODER_AGENT_TOKEN=old-token-from-the-last-build\n",
                    server.access_url()
                ),
                0o600,
            );
        };
        // System mode: the entrypoint is PID 1 and rewrites the file before init.
        let server = FakeCoder::start(Options::default());
        let token = new_token();
        let mut sb = new();
        let init = fake_init(&sb, true);
        let init_target = sb.resolve_inside("/sbin/init");
        stale(&sb, &server);
        sb.bind("--ro-bind", &init, &init_target)
            .env("container", "lxc")
            .env("CODER_AGENT_URL", &server.access_url())
            .env("CODER_AGENT_TOKEN", &token);
        let run = sb.start(&[]);
        let report = expect_agent(&run, &server, &token);
        assert_default_agent(&report, &token, &server.access_url());
        let saved = fs::read_to_string(sb.host("/etc/hakim/agent.env")).unwrap();
        assert!(
            saved.contains(&format!("CODER_AGENT_TOKEN={token}")) && !saved.contains("old-token"),
            "the env file kept the old token"
        );
        drop(run);
        // /sbin/init booted directly: the service prefers PID 1's env to the saved file.
        let server = FakeCoder::start(Options::default());
        let token = new_token();
        let mut sb = new();
        stale(&sb, &server);
        let init = fake_init(&sb, false);
        fs::copy(&init, sb.host("/usr/local/bin/fake-init")).unwrap();
        sb.env("CODER_AGENT_URL", &server.access_url())
            .env("CODER_AGENT_TOKEN", &token);
        let run = sb.spawn(&["/usr/local/bin/fake-init"], None);
        let report = expect_agent(&run, &server, &token);
        assert_default_agent(&report, &token, &server.access_url());
        assert_log_clean(&run, &token);
    }

    pub fn explain_reports_the_decision_without_secrets(new: &dyn Fn() -> Sandbox) {
        use base64::Engine;
        let token = new_token();
        let url = "https://coder.example/prefix/";
        let bootstrap = base64::engine::general_purpose::STANDARD.encode(format!("{url}|{token}"));
        let mut sb = new();
        sb.env("CODER_AGENT_BOOTSTRAP", &bootstrap);
        let explain = |sb: &Sandbox, argv: &[&str]| {
            let mut run = sb.spawn(argv, None);
            let st = run
                .wait_timeout(Duration::from_secs(20))
                .expect("--explain hung");
            let log = run.log();
            assert!(st.success(), "{log}");
            assert!(!log.contains(&token) && !log.contains(&bootstrap), "{log}");
            log
        };
        let pid1 = [ENTRYPOINT, "--explain"];

        sb.env("container", "lxc");
        let out = explain(&sb, &pid1);
        assert!(out.contains("mode=system\n"), "{out}");
        assert!(
            out.contains("credentials=env (CODER_AGENT_BOOTSTRAP)"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "agent_binary_url=https://coder.example/prefix/bin/coder-linux-{}\n",
                coder_arch()
            )),
            "{out}"
        );
        assert!(
            out.contains("user=coder uid=1000 gid=1000 home=/home/coder"),
            "{out}"
        );

        sb.env("HAKIM_INIT", "none");
        let out = explain(&sb, &pid1);
        assert!(out.contains("mode=app\nreason=HAKIM_INIT=none\n"), "{out}");

        sb.env("HAKIM_INIT", "auto").env("container", "docker");
        let out = explain(&sb, &pid1);
        assert!(
            out.contains("mode=app\nreason=container=docker, not lxc\n"),
            "{out}"
        );

        sb.env("container", "lxc");
        let out = explain(&sb, &["sh", "-c", &format!("{ENTRYPOINT} --explain; true")]);
        assert!(out.contains("mode=app\nreason=not PID 1"), "{out}");
    }
}
