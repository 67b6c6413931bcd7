//! Built images mounted as root filesystems, and sandboxes configured the way the image
//! config says (Env, User, WorkingDir).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::oci::ResolvedImage;
use crate::oci::model::ImageConfig;
use crate::rootfs::overlay::{self, Overlay};
use crate::rootfs::{Backend, RootfsCache, RootfsError, Sandbox, io_err};

/// PATH when the image config sets none (what container runtimes use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An image mounted as an overlay of its cached layers with a throwaway upper dir, so
/// nothing run in it changes the cache. Unmounted and deleted on drop.
pub struct MountedImage {
    // Field order matters: the overlay must be unmounted before its directory is removed.
    overlay: Overlay,
    dir: tempfile::TempDir,
    config: ImageConfig,
}

impl MountedImage {
    /// Unpack the image's layers into `cache` (once) and mount them.
    pub fn mount(image: &ResolvedImage, cache: &RootfsCache) -> Result<Self, RootfsError> {
        let lowers = image
            .layers
            .iter()
            .map(|l| cache.ensure(&l.blob, &l.media_type, &l.diff_id))
            .collect::<Result<Vec<_>, _>>()?;
        let dir = tempfile::Builder::new()
            .prefix("hakim-run-")
            .tempdir()
            .map_err(io_err(std::env::temp_dir()))?;
        // A non-root sandbox user must be able to reach the mount point.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711))
            .map_err(io_err(dir.path()))?;
        let (upper, work, root) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("root"),
        );
        for d in [&upper, &work, &root] {
            fs::create_dir(d).map_err(io_err(d))?;
        }
        overlay::match_root(&upper, &lowers)?;
        let overlay = Overlay::mount(&lowers, &upper, &work, &root)?;
        // Mount points get the modes a container runtime gives them (the sandbox would create
        // missing ones with its own umask); they land in the throwaway upper.
        for (d, mode) in [("proc", 0o555), ("dev", 0o755), ("tmp", 0o1777)] {
            let p = root.join(d);
            if fs::symlink_metadata(&p).is_err() {
                fs::create_dir(&p).map_err(io_err(&p))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io_err(&p))?;
            }
        }
        // Likewise the file a networked sandbox binds the host's resolver config over.
        let resolv = root.join("etc/resolv.conf");
        if root.join("etc").is_dir()
            && !root.join("etc").is_symlink()
            && fs::symlink_metadata(&resolv).is_err()
        {
            fs::write(&resolv, b"").map_err(io_err(&resolv))?;
        }
        Ok(Self {
            overlay,
            dir,
            config: image.config.clone(),
        })
    }

    /// The merged root filesystem.
    pub fn root(&self) -> &Path {
        self.overlay.target()
    }

    /// The throwaway upper dir (what commands changed).
    pub fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    /// The image config.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// A sandbox with the image's Env, WorkingDir and User (or `user` when given), a tmpfs
    /// /tmp and no network.
    pub fn sandbox(&self, user: Option<&str>) -> Result<Sandbox, RootfsError> {
        let rc = self.config.config().clone().unwrap_or_default();
        let mut sb = Sandbox::new(self.root());
        sb.env = crate::oci::devcontainer::effective_env(&rc);
        let spec = user
            .or(rc.user().as_deref())
            .filter(|u| !u.is_empty())
            .unwrap_or("0");
        let ids = resolve_user(self.root(), spec)?;
        sb.env
            .entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        sb.env
            .entry("HOME".into())
            .or_insert_with(|| ids.home.clone());
        sb.user = Some((ids.uid, ids.gid));
        sb.groups = ids.groups;
        sb.cwd = rc.working_dir().clone().filter(|w| !w.is_empty());
        sb.tmpfs_tmp = true;
        sb.backend = Backend::Container;
        Ok(sb)
    }
}

/// A user as the image's account files describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserIds {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids (primary included).
    pub groups: Vec<u32>,
    /// Home directory (`/` when unknown).
    pub home: String,
}

/// Read `rel` (like `etc/passwd`) below `root` without following a symlink out of the image;
/// a missing file reads as empty.
fn read_image_file(root: &Path, rel: &str) -> Result<String, RootfsError> {
    let mut p = root.to_path_buf();
    for c in rel.split('/') {
        p.push(c);
        if p.is_symlink() {
            return Err(RootfsError::BadImage {
                path: p,
                message: "is a symlink; refusing to follow it out of the image".into(),
            });
        }
    }
    match fs::read(&p) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io_err(&p)(e)),
    }
}

/// Resolve `user[:group]` (names or numbers) against the image's /etc/passwd and /etc/group.
pub fn resolve_user(root: &Path, spec: &str) -> Result<UserIds, RootfsError> {
    let passwd = read_image_file(root, "etc/passwd")?;
    let group = read_image_file(root, "etc/group")?;
    let err = |message: String| RootfsError::User {
        user: spec.to_string(),
        message,
    };
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let pw: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let gr: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let entry = match user.parse::<u32>() {
        Ok(uid) => pw.iter().find(|f| f[2].parse() == Ok(uid)),
        Err(_) => Some(
            pw.iter()
                .find(|f| f[0] == user)
                .ok_or_else(|| err("no such user in the image's /etc/passwd".into()))?,
        ),
    };
    let uid = match entry {
        Some(f) => f[2]
            .parse()
            .map_err(|_| err(format!("bad uid `{}` in /etc/passwd", f[2])))?,
        None => user.parse().expect("numeric"),
    };
    let mut gid: u32 = match entry {
        Some(f) => f[3]
            .parse()
            .map_err(|_| err(format!("bad gid `{}` in /etc/passwd", f[3])))?,
        None => 0,
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => gr
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| err(format!("no group `{g}` in the image's /etc/group")))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = entry.map(|f| f[0]) {
        for f in &gr {
            if f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse::<u32>()
                && !groups.contains(&g)
            {
                groups.push(g);
            }
        }
    }
    let home = entry
        .map(|f| f[5].to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(UserIds {
        uid,
        gid,
        groups,
        home,
    })
}

/// The image's Entrypoint followed by its Cmd (what `hakim run` runs without a command).
pub fn default_command(config: &ImageConfig) -> Vec<String> {
    let Some(rc) = config.config() else {
        return Vec::new();
    };
    rc.entrypoint()
        .iter()
        .flatten()
        .chain(rc.cmd().iter().flatten())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_name_number_and_group() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ncoder:x:1000:1000::/home/coder:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            d.path().join("etc/group"),
            "root:x:0:\ndocker:x:999:coder\ncoder:x:1000:\n",
        )
        .unwrap();
        let u = resolve_user(d.path(), "coder").unwrap();
        assert_eq!(
            u,
            UserIds {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 999],
                home: "/home/coder".into()
            }
        );
        assert_eq!(resolve_user(d.path(), "coder:docker").unwrap().gid, 999);
        assert_eq!(
            resolve_user(d.path(), "4242").unwrap(),
            UserIds {
                uid: 4242,
                gid: 0,
                groups: vec![0],
                home: "/".into()
            }
        );
        let e = resolve_user(d.path(), "nobody").unwrap_err().to_string();
        assert!(e.contains("`nobody`") && e.contains("/etc/passwd"), "{e}");
        assert!(resolve_user(d.path(), "coder:nogroup").is_err());
    }
}
