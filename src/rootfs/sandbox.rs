//! Running commands inside a root filesystem with bubblewrap.
//!
//! bwrap runs as a child process because unsharing namespaces from the multi-threaded hakim
//! process is not possible. As root it needs no user namespace, so files keep their real
//! owners. A non-root `user` is reached the way a setuid bwrap does it: the child gets that
//! real uid/gid while keeping effective uid 0, bwrap sets the sandbox up privileged and then
//! drops to the real ids with no capabilities left.

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

/// How to run a command in a root filesystem.
#[derive(Clone, Debug, Default)]
pub struct Sandbox {
    /// The root filesystem (usually an overlay mount); writes land in it.
    pub root: PathBuf,
    /// Share the host network (and its /etc/resolv.conf, read-only); off means only `lo`.
    pub network: bool,
    /// The complete environment; nothing is inherited from the host.
    pub env: BTreeMap<String, String>,
    /// Extra bind mounts, applied in order after /proc and /dev.
    pub binds: Vec<Bind>,
    /// Run as this uid/gid instead of root (hakim itself must be root).
    pub user: Option<(u32, u32)>,
    /// Supplementary groups for `user`.
    pub groups: Vec<u32>,
    /// Working directory inside the sandbox.
    pub cwd: Option<String>,
    /// Mount a fresh tmpfs on /tmp.
    pub tmpfs_tmp: bool,
    /// Run the way a container runtime does (unshare + chroot) instead of bwrap, which always
    /// sets no_new_privs: setuid programs such as sudo then work, as in a real workspace.
    pub container: bool,
}

/// Quote a string for the host's /bin/sh.
fn shq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The host resolver config bound into networked sandboxes.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

impl Sandbox {
    /// A sandbox over `root` with no network, an empty environment and root as the user.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ..Self::default()
        }
    }

    /// The bwrap arguments before the command (exposed for logging and tests).
    pub fn args(&self) -> Vec<String> {
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
        } else if Path::new(HOST_RESOLV_CONF).exists()
            && !self.root.join("etc/resolv.conf").is_symlink()
        {
            // A symlinked resolv.conf in the image would be resolved against the host's tree.
            a.extend([
                "--ro-bind".into(),
                HOST_RESOLV_CONF.into(),
                "/etc/resolv.conf".into(),
            ]);
        }
        if self.tmpfs_tmp {
            a.extend(["--tmpfs".into(), "/tmp".into()]);
        }
        for b in &self.binds {
            a.push(if b.readonly { "--ro-bind" } else { "--bind" }.into());
            a.push(b.src.to_string_lossy().into_owned());
            a.push(b.dest.clone());
        }
        a.extend(["--die-with-parent".into(), "--clearenv".into()]);
        for (k, v) in &self.env {
            a.extend(["--setenv".into(), k.clone(), v.clone()]);
        }
        if let Some(cwd) = &self.cwd {
            a.extend(["--chdir".into(), cwd.clone()]);
        }
        a
    }

    /// The `bwrap` command that runs `argv` in the sandbox. Its own environment is cleared
    /// too, so no host variable (tokens included) can reach the sandbox.
    pub fn command(&self, argv: &[String]) -> Command {
        if self.container {
            return self.container_command(argv);
        }
        // Resolved with hakim's PATH: the cleared environment has none.
        let mut c = Command::new(bwrap_path().unwrap_or_else(|| PathBuf::from("bwrap")));
        c.env_clear();
        c.args(self.args()).arg("--").args(argv);
        if let Some((uid, gid)) = self.user
            && (uid, gid) != (0, 0)
        {
            let groups: Vec<libc::gid_t> = self.groups.clone();
            // SAFETY: only async-signal-safe libc calls between fork and exec.
            unsafe {
                c.pre_exec(move || drop_to(uid, gid, &groups));
            }
        }
        c
    }
}

/// Set the real uid, all gids and the groups of the bwrap child, keeping effective uid 0
impl Sandbox {
    /// The unshare + chroot form of [`Sandbox::command`].
    fn container_command(&self, argv: &[String]) -> Command {
        let r = shq(&self.root.to_string_lossy());
        // The image's environment is this process's environment (nothing else reaches the
        // image); the host side of the script uses its own PATH until the final exec.
        let mut script = format!(
            "IMG_PATH=${{PATH-}}\nPATH=/usr/sbin:/usr/bin:/sbin:/bin\nset -e\nmount --make-rprivate /\nR={r}\n\
             mkdir -p \"$R/proc\" \"$R/dev\" \"$R/tmp\"\nmount -t proc proc \"$R/proc\"\nmount --rbind /dev \"$R/dev\"\n\
             printf localhost > /proc/sys/kernel/hostname\n"
        );
        let mut chroot =
            String::from("CHROOT=$(command -v chroot)\nPATH=$IMG_PATH\nexec \"$CHROOT\"");
        if let Some((uid, gid)) = self.user
            && (uid, gid) != (0, 0)
        {
            chroot.push_str(&format!(" --userspec={uid}:{gid}"));
            let groups: Vec<String> = std::iter::once(gid)
                .chain(self.groups.iter().copied())
                .map(|g| g.to_string())
                .collect();
            chroot.push_str(&format!(" --groups={}", groups.join(",")));
        }
        chroot.push_str(" \"$R\"");
        let cwd = self.cwd.clone().unwrap_or_else(|| "/".into());
        chroot.push_str(&format!(
            " /bin/sh -c 'cd \"$0\" && exec \"$@\"' {}",
            shq(&cwd)
        ));
        for a in argv {
            chroot.push(' ');
            chroot.push_str(&shq(a));
        }
        script.push_str(&chroot);
        // Resolved with hakim's PATH: the child's environment is the image's.
        let unshare = std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("unshare"))
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| PathBuf::from("unshare"));
        let mut c = Command::new(unshare);
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
        c
    }
}

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
        what: "bwrap".into(),
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

fn bwrap_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
}

/// Fail with an install hint unless `bwrap` is on PATH.
pub fn require_bwrap() -> Result<(), RootfsError> {
    if bwrap_path().is_some() {
        Ok(())
    } else {
        Err(RootfsError::MissingTool {
            tool: "bwrap".into(),
            package: "bubblewrap".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Change detector: the exact bwrap argv, copied from the implementation, so any change to
    /// it is a conscious one. The behaviour (no network, clean env, writes only to the upper) is
    /// tested with real bwrap in tests/rootfs.rs (`the_sandbox_isolates_network_env_and_user_...`).
    #[test]
    fn change_detector_bwrap_args_isolate_by_default() {
        let mut s = Sandbox::new("/r");
        s.env.insert("A".into(), "b".into());
        s.cwd = Some("/w".into());
        let a = s.args().join(" ");
        assert!(a.starts_with("--bind /r / --proc /proc --dev /dev --unshare-pid --unshare-ipc --unshare-uts --unshare-net"), "{a}");
        assert!(
            a.ends_with("--die-with-parent --clearenv --setenv A b --chdir /w"),
            "{a}"
        );
        s.network = true;
        assert!(!s.args().contains(&"--unshare-net".to_string()));
    }
}
