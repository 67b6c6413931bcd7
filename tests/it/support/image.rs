//! Running the real hakim-base image the way users do: built once per test process, then
//! unpacked with umoci, run by podman (runc) or by LXC, reached through 127.0.0.1 only.

use super::{repo_root, require_bin, require_root, run_ok, umoci_unpack};
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The reference every test runs.
pub const BASE_REF: &str = "hakim-base:latest";

/// `hakim build base` output, made once per test process.
pub struct BuiltBase {
    /// Holds the layout and the unpacked bundle.
    pub out: tempfile::TempDir,
}

impl BuiltBase {
    /// The OCI layout holding `hakim-base:latest`.
    pub fn layout(&self) -> PathBuf {
        self.out.path().join("oci")
    }
}

/// Builds the real base image (root, the configured Debian mirror, the default cache).
pub fn built_base() -> &'static BuiltBase {
    static BUILT: OnceLock<BuiltBase> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_root();
        require_bin("bwrap", "bubblewrap");
        let out = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_hakim"))
                .arg("--project")
                .arg(repo_root())
                .arg("--out")
                .arg(out.path())
                .args(["build", "base"]),
        );
        eprintln!("hakim build base: {:.1?}", t0.elapsed());
        BuiltBase { out }
    })
}

/// The image's rootfs as umoci unpacks it (shared and never written to: copy it first).
pub fn unpacked_base() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let built = built_base();
        umoci_unpack(
            &built.layout(),
            BASE_REF,
            &built.out.path().join("base-bundle"),
        )
    })
}

/// Runs `cmd` under `timeout -k 5 SECS`, so no wait on a container tool is unbounded.
pub fn bounded(secs: u64, program: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", &secs.to_string(), program]);
    c
}

/// A uniquely named scratch object (container, image tag).
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A private podman (own storage, runc, cgroupfs, file events) as the BRIEF's recipe says.
pub struct Podman {
    /// Lowercase on purpose: `podman pull oci:DIR` names the image after DIR, and a
    /// reference must be lowercase (tempfile's random names are not).
    dir: PathBuf,
    containers: Mutex<Vec<String>>,
}

impl Podman {
    /// Sets up the private configuration and storage.
    pub fn new() -> Podman {
        require_root();
        for (bin, pkg) in [
            ("podman", "podman"),
            ("runc", "runc"),
            ("timeout", "coreutils"),
        ] {
            require_bin(bin, pkg);
        }
        let dir = std::env::temp_dir().join(unique("hakim-podman"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Podman {
            dir,
            containers: Mutex::new(Vec::new()),
        }
    }

    /// `podman` with the private root, bounded by `secs`.
    pub fn cmd(&self, secs: u64) -> Command {
        let mut c = bounded(secs, "podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"));
        c
    }

    /// Pulls `oci:LAYOUT:REF` and returns the image ID (every oci: pull gets the same name).
    pub fn pull(&self, layout: &Path, reference: &str) -> String {
        let link = self.dir.join("layout");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(layout, &link).unwrap();
        let out = run_ok(
            self.cmd(300)
                .arg("pull")
                .arg("-q")
                .arg(format!("oci:{}:{reference}", link.display())),
        );
        let id = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(id.len() >= 12, "podman pull printed no image ID: {id:?}");
        id
    }

    /// Remembers a container name so that dropping `self` removes it.
    pub fn track(&self, name: &str) {
        self.containers.lock().unwrap().push(name.to_string());
    }
}

impl Default for Podman {
    fn default() -> Self {
        Podman::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in self.containers.lock().unwrap().drain(..) {
            let _ = self.cmd(60).args(["rm", "-f", "-t", "0", &name]).output();
        }
        // Not `system reset`: as root it also drops networks shared with the host's podman.
        let _ = self.cmd(120).args(["rmi", "-a", "-f"]).output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Subordinate id range used for unprivileged containers (as on Proxmox).
pub const IDMAP_BASE: u32 = 100000;

/// Makes sure `root:100000:65536` is in /etc/subuid and /etc/subgid.
pub fn ensure_subids() {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let line = format!("root:{IDMAP_BASE}:65536");
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.trim() == line) {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .unwrap_or_else(|e| panic!("cannot add {line} to {file}: {e}"));
            let sep = if text.is_empty() || text.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            writeln!(f, "{sep}{line}").unwrap();
        }
    }
}

/// Requires the LXC tools.
pub fn require_lxc() {
    require_root();
    for bin in [
        "lxc-start",
        "lxc-stop",
        "lxc-attach",
        "lxc-info",
        "lxc-destroy",
    ] {
        require_bin(bin, "lxc");
    }
    require_bin("timeout", "coreutils");
}

/// One LXC container under a private lxcpath; stopped and destroyed when dropped.
pub struct Lxc {
    /// The lxcpath (`-P`).
    pub path: tempfile::TempDir,
    /// The container name (`-n`).
    pub name: String,
}

impl Lxc {
    /// A container named `name` in a fresh lxcpath (nothing is created yet).
    pub fn new(name: &str) -> Lxc {
        require_lxc();
        Lxc {
            path: tempfile::tempdir().unwrap(),
            name: unique(name),
        }
    }

    /// The container directory, `<lxcpath>/<name>`.
    pub fn dir(&self) -> PathBuf {
        self.path.path().join(&self.name)
    }

    /// An `lxc-*` command for this container, bounded by `secs`.
    pub fn cmd(&self, tool: &str, secs: u64) -> Command {
        let mut c = bounded(secs, tool);
        c.arg("-P").arg(self.path.path()).arg("-n").arg(&self.name);
        c
    }

    /// Starts the container in the background, with a log file for failures.
    pub fn start(&self) {
        run_ok(
            self.cmd("lxc-start", 60)
                .arg("-d")
                .arg("-l")
                .arg("INFO")
                .arg("-o")
                .arg(self.dir().join("lxc.log")),
        );
    }

    /// The host PID of the container's init.
    pub fn init_pid(&self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self
                .cmd("lxc-info", 20)
                .args(["-p", "-H"])
                .output()
                .unwrap();
            if let Ok(pid) = String::from_utf8_lossy(&out.stdout).trim().parse::<i32>() {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "{} has no init pid; lxc log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `argv` in the container with a clean environment.
    pub fn attach(&self, secs: u64, argv: &[&str]) -> Output {
        self.cmd("lxc-attach", secs)
            .arg("--clear-env")
            .arg("--")
            .args(argv)
            .output()
            .unwrap()
    }

    /// Polls `systemctl is-system-running --wait` until it says running or degraded.
    pub fn wait_booted(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.attach(60, &["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not boot (state {state:?}, {}); lxc log:\n{}",
                self.name,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The LXC log and the console log, for failure messages.
    pub fn log(&self) -> String {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        let lxc = read(self.dir().join("lxc.log"));
        let tail: Vec<&str> = lxc.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- lxc.log (tail) ---\n{}\n--- console ---\n{}",
            tail.join("\n"),
            read(self.dir().join("console.log"))
        )
    }
}

impl Drop for Lxc {
    fn drop(&mut self) {
        let _ = self.cmd("lxc-stop", 60).arg("-k").output();
        let _ = self.cmd("lxc-destroy", 120).output();
    }
}

/// The config lines every hand-written LXC config here shares (BRIEF §6, network `empty`).
pub fn lxc_base_config(name: &str, rootfs: &Path, console_log: &Path) -> String {
    format!(
        "lxc.include = /usr/share/lxc/config/debian.common.conf\n\
         lxc.arch = linux64\n\
         lxc.uts.name = {name}\n\
         lxc.rootfs.path = dir:{}\n\
         lxc.net.0.type = empty\n\
         lxc.console.logfile = {}\n",
        rootfs.display(),
        console_log.display()
    )
}

/// Makes `127.0.0.1:port` inside the network namespace of `pid` reach `127.0.0.1:port` on
/// the host, so a container with its own (empty) network still talks to a host test server.
pub struct NetnsForward {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn setns_net(fd: &fs::File) -> std::io::Result<()> {
    // SAFETY: setns(2) on an open namespace fd; it affects only the calling thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl NetnsForward {
    /// Listens on 127.0.0.1:`port` in `pid`'s network namespace and forwards to the host.
    pub fn start(pid: i32, port: u16) -> NetnsForward {
        // An LXC `empty` network has only `lo`, and nothing brings it up unless systemd
        // boots (HAKIM_INIT=none): without it 127.0.0.1 is unreachable inside.
        require_bin("nsenter", "util-linux");
        require_bin("ip", "iproute2");
        run_ok(
            Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .args(["ip", "link", "set", "lo", "up"]),
        );
        let host_ns = fs::File::open("/proc/thread-self/ns/net").unwrap();
        let target = fs::File::open(format!("/proc/{pid}/ns/net"))
            .unwrap_or_else(|e| panic!("network namespace of pid {pid}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let listener = setns_net(&target).and_then(|()| {
                let l = TcpListener::bind(("127.0.0.1", port))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => {
                    tx.send(Ok(())).unwrap();
                    l
                }
                Err(e) => {
                    tx.send(Err(e)).unwrap();
                    return;
                }
            };
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((inner, _)) => {
                        let host_ns = host_ns.try_clone().unwrap();
                        std::thread::spawn(move || {
                            // A new thread starts in the container's namespace; go home first.
                            if setns_net(&host_ns).is_err() {
                                return;
                            }
                            let _ = inner.set_nonblocking(false);
                            let Ok(outer) = TcpStream::connect(("127.0.0.1", port)) else {
                                return;
                            };
                            let (i2, o2) = (inner.try_clone().unwrap(), outer.try_clone().unwrap());
                            let back = std::thread::spawn(move || pipe(o2, i2));
                            pipe(inner, outer);
                            let _ = back.join();
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => break,
                }
            }
        });
        rx.recv().unwrap().unwrap_or_else(|e| {
            panic!("cannot listen on 127.0.0.1:{port} in pid {pid}'s netns: {e}")
        });
        NetnsForward {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NetnsForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The port of an `http://127.0.0.1:PORT...` URL.
pub fn url_port(url: &str) -> u16 {
    url.strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.split(['/', '?']).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a 127.0.0.1 URL: {url}"))
}

/// Creates `ct` from an OCI archive the way Proxmox does (`lxc-create -t oci`), then makes it
/// an application-style CT: `entrypoint` as `lxc.init.cmd` and `env` as `lxc.environment`.
/// Returns the console log path.
pub fn lxc_create_oci(ct: &Lxc, archive: &Path, entrypoint: &str, env: &[(&str, &str)]) -> PathBuf {
    for bin in ["skopeo", "umoci", "jq"] {
        require_bin(bin, bin);
    }
    let console = ct.path.path().join("console.log");
    let create_conf = ct.path.path().join("create.conf");
    fs::write(
        &create_conf,
        format!(
            "lxc.net.0.type = empty\nlxc.console.logfile = {}\n",
            console.display()
        ),
    )
    .unwrap();
    // Generous: umoci unpacks the whole image, slowly on a loaded machine.
    run_ok(
        ct.cmd("lxc-create", 900)
            .arg("-f")
            .arg(&create_conf)
            .args(["-t", "oci", "--", "--no-cache", "--url"])
            .arg(format!("oci-archive:{}", archive.display())),
    );
    let config_path = ct.dir().join("config");
    let mut config = fs::read_to_string(&config_path).unwrap();
    assert!(
        config.contains(&format!("lxc.execute.cmd = '\"{entrypoint}\" '")),
        "the OCI template did not take the image entrypoint:\n{config}"
    );
    config.push_str(&format!("lxc.init.cmd = {entrypoint}\n"));
    for (k, v) in env {
        config.push_str(&format!("lxc.environment = {k}={v}\n"));
    }
    fs::write(&config_path, config).unwrap();
    console
}
