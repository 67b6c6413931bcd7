//! Running commands inside a root filesystem, with one of two backends.
//!
//! Both run as a child process, because unsharing namespaces from the multi-threaded hakim
//! process is not possible, and both need root, so files keep their real owners.
//! - [`Backend::Bwrap`] (bubblewrap) builds layers. A non-root `user` is reached the way a
//!   setuid bwrap does it: the child gets that real uid/gid while keeping effective uid 0; bwrap
//!   sets the sandbox up privileged and then drops to the real ids with no capabilities left.
//!   bwrap always sets no_new_privs.
//! - [`Backend::Container`] (util-linux `unshare` + coreutils `chroot`) runs images for
//!   `hakim run` and `hakim test` the way a container runtime does: no no_new_privs, so setuid
//!   programs such as sudo work as they do in a real workspace.
//!
//! Every option of [`Sandbox`] is honoured by both backends; what a backend cannot do safely is
//! refused with [`SandboxError`] before anything runs.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::RootfsError;

/// A host path made visible inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub src: PathBuf,
    /// Absolute path inside the sandbox.
    pub dest: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// Which program isolates the command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// bubblewrap, with no_new_privs (layer builds).
    #[default]
    Bwrap,
    /// unshare + chroot, without no_new_privs, as container runtimes run images.
    Container,
}

/// A program a backend runs, and the Debian package that ships it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tool {
    /// Program name looked up in PATH.
    pub name: &'static str,
    /// Package to install when it is missing.
    pub package: &'static str,
}

impl Backend {
    /// The host programs this backend needs (and nothing else).
    pub fn tools(self) -> &'static [Tool] {
        match self {
            Self::Bwrap => &[Tool {
                name: "bwrap",
                package: "bubblewrap",
            }],
            Self::Container => &[
                Tool {
                    name: "unshare",
                    package: "util-linux",
                },
                Tool {
                    name: "mount",
                    package: "mount",
                },
                Tool {
                    name: "chroot",
                    package: "coreutils",
                },
            ],
        }
    }

    /// Fail with an install hint unless every tool of this backend is on PATH.
    pub fn require(self) -> Result<(), RootfsError> {
        for t in self.tools() {
            find_in_path(t.name).ok_or_else(|| RootfsError::MissingTool {
                tool: t.name.into(),
                package: t.package.into(),
            })?;
        }
        Ok(())
    }
}

/// An option the chosen backend cannot honour safely.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A bind destination must be an absolute, normalised path.
    #[error("bind destination `{dest}` must be an absolute path without `.` or `..`")]
    BadDest {
        /// The destination given.
        dest: String,
    },
    /// A mount point lies under a symlink in the root, which chroot-side mounting would
    /// resolve against the host's tree.
    #[error("mount point `{dest}` lies under the symlink `{link}` in the root filesystem")]
    SymlinkedMountPoint {
        /// The mount point inside the sandbox.
        dest: String,
        /// The symlink found on its way.
        link: String,
    },
}

/// How to run a command in a root filesystem.
#[derive(Clone, Debug, Default)]
pub struct Sandbox {
    /// The root filesystem (usually an overlay mount); writes land in it.
    pub root: PathBuf,
    /// Which program isolates the command.
    pub backend: Backend,
    /// Share the host network (and its /etc/resolv.conf, read-only); off means only `lo`.
    pub network: bool,
    /// The complete environment; nothing is inherited from the host.
    pub env: BTreeMap<String, String>,
    /// Extra bind mounts, applied in order after /proc, /dev and /tmp.
    pub binds: Vec<Bind>,
    /// Run as this uid/gid instead of root (hakim itself must be root).
    pub user: Option<(u32, u32)>,
    /// Supplementary groups for `user`.
    pub groups: Vec<u32>,
    /// Working directory inside the sandbox.
    pub cwd: Option<String>,
    /// Mount a fresh tmpfs on /tmp.
    pub tmpfs_tmp: bool,
}

/// Quote a string for the host's /bin/sh.
fn shq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The host resolver config bound into networked sandboxes.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

impl Sandbox {
    /// A bwrap sandbox over `root` with no network, an empty environment and root as the user.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ..Self::default()
        }
    }

    /// Whether the host's resolver config is bound over the image's.
    fn binds_resolv_conf(&self) -> bool {
        // A symlinked resolv.conf in the image would be resolved against the host's tree.
        self.network
            && Path::new(HOST_RESOLV_CONF).exists()
            && !self.root.join("etc/resolv.conf").is_symlink()
    }

    /// Every mount after /proc and /dev, in order: /tmp, the resolver config, then `binds`.
    fn mounts(&self) -> Result<Vec<Mount>, SandboxError> {
        let mut out = Vec::new();
        if self.tmpfs_tmp {
            out.push(Mount::Tmpfs("/tmp".into()));
        }
        if self.binds_resolv_conf() {
            out.push(Mount::Bind(Bind {
                src: HOST_RESOLV_CONF.into(),
                dest: "/etc/resolv.conf".into(),
                readonly: true,
            }));
        }
        for b in &self.binds {
            // Checked as text: `Path::components` would silently drop a `.`.
            let normal = b.dest.strip_prefix('/').is_some_and(|rest| {
                rest.split('/')
                    .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            });
            if !normal {
                return Err(SandboxError::BadDest {
                    dest: b.dest.clone(),
                });
            }
            out.push(Mount::Bind(b.clone()));
        }
        Ok(out)
    }

    /// The bwrap arguments before the command (exposed for logging and tests).
    pub fn bwrap_args(&self) -> Result<Vec<String>, SandboxError> {
        let mut a: Vec<String> = vec![
            "--bind".into(),
            self.root.to_string_lossy().into_owned(),
            "/".into(),
        ];
        for s in [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
        ] {
            a.push(s.into());
        }
        if !self.network {
            a.push("--unshare-net".into());
        }
        for m in self.mounts()? {
            match m {
                Mount::Tmpfs(dest) => a.extend(["--tmpfs".into(), dest]),
                Mount::Bind(b) => a.extend([
                    if b.readonly { "--ro-bind" } else { "--bind" }.into(),
                    b.src.to_string_lossy().into_owned(),
                    b.dest,
                ]),
            }
        }
        a.extend(["--die-with-parent".into(), "--clearenv".into()]);
        for (k, v) in &self.env {
            a.extend(["--setenv".into(), k.clone(), v.clone()]);
        }
        if let Some(cwd) = &self.cwd {
            a.extend(["--chdir".into(), cwd.clone()]);
        }
        Ok(a)
    }

    /// The command that runs `argv` in the sandbox. Its own environment is cleared too, so no
    /// host variable (tokens included) can reach the sandbox.
    pub fn command(&self, argv: &[String]) -> Result<Command, RootfsError> {
        self.backend.require()?;
        match self.backend {
            Backend::Bwrap => self.bwrap_command(argv),
            Backend::Container => self.container_command(argv),
        }
    }

    fn bwrap_command(&self, argv: &[String]) -> Result<Command, RootfsError> {
        // Resolved with hakim's PATH: the cleared environment has none.
        let mut c = Command::new(find_in_path("bwrap").unwrap_or_else(|| "bwrap".into()));
        c.env_clear();
        c.args(self.bwrap_args()?).arg("--").args(argv);
        if let Some((uid, gid)) = self.user
            && (uid, gid) != (0, 0)
        {
            let groups: Vec<libc::gid_t> = self.groups.clone();
            // SAFETY: only async-signal-safe libc calls between fork and exec.
            unsafe {
                c.pre_exec(move || drop_to(uid, gid, &groups));
            }
        }
        Ok(c)
    }

    /// The host-side setup script of the container backend: it runs in fresh namespaces as
    /// root, mounts what bwrap would, then execs chroot. Every value in it is quoted.
    pub fn container_script(&self, argv: &[String]) -> Result<String, SandboxError> {
        let mut lines = vec![
            // The image's environment is this process's environment (nothing else reaches the
            // image); the host side of the script uses its own PATH until the final exec.
            "IMG_PATH=${PATH-}".to_string(),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "set -e".into(),
            "mount --make-rprivate /".into(),
            format!("R={}", shq(&self.root.to_string_lossy())),
        ];
        lines.extend(self.mount_lines("/proc", "mount -t proc proc", false)?);
        lines.extend(self.mount_lines("/dev", "mount --rbind /dev", false)?);
        for m in self.mounts()? {
            let more = match m {
                Mount::Tmpfs(dest) => {
                    self.mount_lines(&dest, "mount -t tmpfs -o mode=1777 tmpfs", false)?
                }
                Mount::Bind(b) => {
                    let how = format!("mount --bind {}", shq(&b.src.to_string_lossy()));
                    let mut l = self.mount_lines(&b.dest, &how, !b.src.is_dir())?;
                    if b.readonly {
                        l.push(format!("mount -o remount,bind,ro \"$R\"{}", shq(&b.dest)));
                    }
                    l
                }
            };
            lines.extend(more);
        }
        lines.push("printf localhost > /proc/sys/kernel/hostname".into());
        let mut chroot =
            String::from("CHROOT=$(command -v chroot)\nPATH=$IMG_PATH\nexec \"$CHROOT\"");
        if let Some((uid, gid)) = self.user
            && (uid, gid) != (0, 0)
        {
            let groups: Vec<String> = std::iter::once(gid)
                .chain(self.groups.iter().copied())
                .map(|g| g.to_string())
                .collect();
            chroot.push_str(&format!(
                " --userspec={uid}:{gid} --groups={}",
                groups.join(",")
            ));
        }
        let cwd = self.cwd.clone().unwrap_or_else(|| "/".into());
        chroot.push_str(&format!(
            " \"$R\" /bin/sh -c 'cd \"$0\" && exec \"$@\"' {}",
            shq(&cwd)
        ));
        for a in argv {
            chroot.push(' ');
            chroot.push_str(&shq(a));
        }
        lines.push(chroot);
        Ok(lines.join("\n"))
    }

    /// Script lines that create the mount point `dest` (a file when `file`) and run `how` on it.
    fn mount_lines(&self, dest: &str, how: &str, file: bool) -> Result<Vec<String>, SandboxError> {
        self.check_mount_point(dest)?;
        let at = format!("\"$R\"{}", shq(dest));
        let create = if file {
            format!("[ -e {at} ] || {{ mkdir -p \"$(dirname {at})\"; : > {at}; }}")
        } else {
            format!("mkdir -p {at}")
        };
        Ok(vec![create, format!("{how} {at}")])
    }

    /// Refuse a mount point with a symlink on its way: the script mounts from the host side,
    /// where an absolute link in the image would point into the host's tree.
    fn check_mount_point(&self, dest: &str) -> Result<(), SandboxError> {
        let mut at = self.root.clone();
        for part in Path::new(dest).components().skip(1) {
            at.push(part);
            if at.is_symlink() {
                return Err(SandboxError::SymlinkedMountPoint {
                    dest: dest.into(),
                    link: format!("/{}", at.strip_prefix(&self.root).unwrap_or(&at).display()),
                });
            }
        }
        Ok(())
    }

    fn container_command(&self, argv: &[String]) -> Result<Command, RootfsError> {
        let script = self.container_script(argv)?;
        // Resolved with hakim's PATH: the child's environment is the image's.
        let mut c = Command::new(find_in_path("unshare").unwrap_or_else(|| "unshare".into()));
        c.env_clear();
        c.envs(&self.env);
        c.args([
            "--fork",
            "--pid",
            "--mount",
            "--uts",
            "--ipc",
            "--kill-child",
        ]);
        if !self.network {
            c.arg("--net");
        }
        c.args(["--", "/bin/sh", "-c", &script]);
        Ok(c)
    }
}

/// One mount after /proc and /dev.
enum Mount {
    Tmpfs(String),
    Bind(Bind),
}

/// Set the real uid, all gids and the groups of the bwrap child, keeping effective uid 0
/// for its setup.
fn drop_to(uid: u32, gid: u32, groups: &[libc::gid_t]) -> std::io::Result<()> {
    let keep = libc::uid_t::MAX; // -1: leave unchanged
    // SAFETY: plain syscalls on values we own.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if uid == 0 {
            // Root with another group: no privilege drop needed, just the group.
            if libc::setresgid(gid, gid, gid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(());
        }
        // All gids now: bwrap only drops the uid, and an exec with egid != gid would leave
        // the sandbox's first process non-dumpable (its /proc/self/fd owned by root).
        if libc::setresgid(gid, gid, gid) != 0 || libc::setresuid(uid, keep, keep) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Run a sandbox command attached to the terminal and return its exit code (128 + signal
/// when killed). Ctrl-C and Ctrl-\ go to the sandbox only, so hakim survives to unmount.
pub fn run_foreground(mut cmd: Command) -> Result<i32, RootfsError> {
    // SAFETY: resetting signal dispositions is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    // SAFETY: plain signal(2) calls; the old handlers are restored below.
    let (old_int, old_quit) = unsafe {
        (
            libc::signal(libc::SIGINT, libc::SIG_IGN),
            libc::signal(libc::SIGQUIT, libc::SIG_IGN),
        )
    };
    let status = cmd.status();
    // SAFETY: as above.
    unsafe {
        libc::signal(libc::SIGINT, old_int);
        libc::signal(libc::SIGQUIT, old_quit);
    }
    let status = status.map_err(|source| RootfsError::Spawn {
        what: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    Ok(exit_code(status))
}

/// A process's exit code, or 128 + the signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bwrap_args_isolate_by_default() {
        let mut s = Sandbox::new("/r");
        s.env.insert("A".into(), "b".into());
        s.cwd = Some("/w".into());
        let a = s.bwrap_args().unwrap().join(" ");
        assert!(a.starts_with("--bind /r / --proc /proc --dev /dev --unshare-pid --unshare-ipc --unshare-uts --unshare-net"), "{a}");
        assert!(
            a.ends_with("--die-with-parent --clearenv --setenv A b --chdir /w"),
            "{a}"
        );
        s.network = true;
        assert!(
            !s.bwrap_args()
                .unwrap()
                .contains(&"--unshare-net".to_string())
        );
    }

    #[test]
    fn backends_need_only_their_own_tools() {
        let names = |b: Backend| b.tools().iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names(Backend::Bwrap), ["bwrap"]);
        assert!(!names(Backend::Container).contains(&"bwrap"));
    }

    #[test]
    fn every_backend_refuses_unsafe_mount_points() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("mnt")).unwrap();
        for backend in [Backend::Bwrap, Backend::Container] {
            let mut s = Sandbox::new(root.path());
            s.backend = backend;
            for dest in ["rel", "/a/../b", "/./a", "/a//b", "/"] {
                s.binds = vec![Bind {
                    src: "/usr".into(),
                    dest: dest.into(),
                    readonly: true,
                }];
                let err = s.bwrap_args().unwrap_err();
                assert!(matches!(err, SandboxError::BadDest { .. }), "{err}");
                let err = s.container_script(&[]).unwrap_err();
                assert!(matches!(err, SandboxError::BadDest { .. }), "{err}");
            }
        }
        // Mounting from the host side through an image's absolute symlink would hit the host.
        let mut s = Sandbox::new(root.path());
        s.binds = vec![Bind {
            src: "/usr".into(),
            dest: "/mnt/x".into(),
            readonly: false,
        }];
        let err = s.container_script(&[]).unwrap_err().to_string();
        assert_eq!(
            err,
            "mount point `/mnt/x` lies under the symlink `/mnt` in the root filesystem"
        );
    }

    /// A root filesystem borrowing the host's merged /usr through a read-only bind.
    fn host_usr_root() -> tempfile::TempDir {
        assert!(
            Path::new("/bin").is_symlink(),
            "this test needs a merged-/usr host (Debian >= 12)"
        );
        let root = tempfile::tempdir().unwrap();
        // The sandbox user must be able to enter its root.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        for l in ["bin", "lib", "lib64", "sbin"] {
            if Path::new("/").join(l).is_symlink() {
                std::os::unix::fs::symlink(format!("usr/{l}"), root.path().join(l)).unwrap();
            }
        }
        for d in ["usr", "etc", "data"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        root
    }

    fn run(s: &Sandbox, script: &str) -> String {
        let out = s
            .command(&["/bin/sh".into(), "-c".into(), script.into()])
            .unwrap()
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{:?}: {}",
            s.backend,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Both backends honour binds (rw and ro), tmpfs /tmp, env, cwd, user and groups.
    #[test]
    fn every_backend_honours_every_option() {
        // SAFETY: getuid(2) cannot fail.
        assert_eq!(
            unsafe { libc::getuid() },
            0,
            "sandboxes need root: run the tests as root"
        );
        for backend in [Backend::Bwrap, Backend::Container] {
            backend.require().unwrap();
            let root = host_usr_root();
            let data = tempfile::tempdir().unwrap();
            let mut s = Sandbox::new(root.path());
            s.backend = backend;
            s.tmpfs_tmp = true;
            s.cwd = Some("/data".into());
            s.env.insert("PATH".into(), "/usr/bin:/bin".into());
            s.env.insert("MARK".into(), "m-1".into());
            s.binds = vec![
                Bind {
                    src: "/usr".into(),
                    dest: "/usr".into(),
                    readonly: true,
                },
                Bind {
                    src: data.path().into(),
                    dest: "/data".into(),
                    readonly: false,
                },
            ];
            let out = run(
                &s,
                "echo \"$MARK $(pwd) $(stat -f -c %T /tmp)\"; echo written > out; \
                 if touch /usr/x 2>/dev/null; then echo usr-rw; else echo usr-ro; fi",
            );
            assert_eq!(out, "m-1 /data tmpfs\nusr-ro\n", "{backend:?}");
            assert_eq!(
                std::fs::read_to_string(data.path().join("out")).unwrap(),
                "written\n",
                "{backend:?}"
            );
            assert!(!root.path().join("tmp/out").exists());

            s.user = Some((65534, 65534));
            s.groups = vec![100];
            s.cwd = Some("/".into());
            let out = run(&s, "echo $(id -u) $(id -G)");
            assert_eq!(out, "65534 65534 100\n", "{backend:?}");
        }
    }
}
