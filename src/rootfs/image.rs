//! Built images from an OCI layout as mounted root filesystems, and sandboxes configured the
//! way the image config says (Env, User, WorkingDir).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::overlay::{self, Overlay};
use super::sandbox::Sandbox;
use super::unpack::RootfsCache;
use super::{RootfsError, io_err};
use crate::digest::Sha256Digest;
use crate::oci::model::{ImageConfig, Platform};
use crate::oci::{Layout, LayoutError};
use crate::spec::Variant;

/// PATH when the image config sets none (what container runtimes use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One layer blob of a resolved image.
#[derive(Clone, Debug)]
pub struct LayerRef {
    /// The blob file in the layout.
    pub blob: PathBuf,
    /// Its media type.
    pub media_type: String,
    /// Digest of the blob as stored.
    pub digest: Sha256Digest,
    /// Size of the blob as stored.
    pub size: u64,
    /// Digest of its uncompressed tar.
    pub diff_id: Sha256Digest,
}

/// An image found in a layout, for one architecture.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The `name:tag` it was found under.
    pub reference: String,
    /// Manifest digest.
    pub manifest: Sha256Digest,
    /// The image config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerRef>,
}

/// The Debian name of the architecture hakim runs on.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "x86" => "i386",
        "powerpc64" => "ppc64el",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// The ref the last build of `variant` wrote: `name:tag` when a tag is given, else the refs of
/// the variant's name in the layout matched against its tag templates in order (no git is
/// asked and nothing re-expanded, so `{version}` tags are found too). When several matching
/// refs name different images, the newest build wins; without that record, `--tag` decides.
pub fn variant_ref(
    layout: &Layout,
    variant: &Variant,
    tag: Option<&str>,
) -> Result<String, RootfsError> {
    if let Some(t) = tag {
        return Ok(format!("{}:{t}", variant.name));
    }
    let prefix = format!("{}:", variant.name);
    let refs = layout.refs()?;
    let newest = layout.newest(&variant.name)?;
    for template in &variant.tags {
        let hits: Vec<&(String, _)> = refs
            .iter()
            .filter(|(r, _)| {
                r.strip_prefix(&prefix)
                    .is_some_and(|t| crate::git::template_matches(template, t))
            })
            .collect();
        let Some((first, d)) = hits.first() else {
            continue;
        };
        if hits.iter().all(|(_, h)| h.digest == d.digest) {
            return Ok(first.clone());
        }
        if let Some((r, _)) = hits.iter().find(|(_, h)| Some(h.digest) == newest) {
            return Ok(r.clone());
        }
        let names: Vec<&str> = hits.iter().map(|(r, _)| r.as_str()).collect();
        return Err(RootfsError::Ambiguous {
            variant: variant.key.clone(),
            refs: names.join(", "),
        });
    }
    Err(RootfsError::NotBuilt {
        variant: variant.key.clone(),
        reference: format!("{}:{}", variant.name, variant.tags.join("|")),
        layout: layout.dir().to_path_buf(),
    })
}

/// The image the last build of `variant` wrote into the layout at `layout_dir` (see
/// [`variant_ref`]), for `arch`: what `hakim run` and `hakim test` start from.
pub fn find_variant_image(
    layout_dir: &Path,
    variant: &Variant,
    tag: Option<&str>,
    arch: &str,
) -> Result<ResolvedImage, RootfsError> {
    let not_built = |reference: String| RootfsError::NotBuilt {
        variant: variant.key.clone(),
        reference,
        layout: layout_dir.to_path_buf(),
    };
    if !layout_dir.join("oci-layout").exists() {
        return Err(not_built(format!(
            "{}:{}",
            variant.name,
            variant.tags.join("|")
        )));
    }
    let layout = Layout::open(layout_dir)?;
    let reference = variant_ref(&layout, variant, tag)?;
    match image_for_arch(&layout, &reference, arch) {
        Err(RootfsError::Layout(e)) if matches!(*e, LayoutError::RefNotFound { .. }) => {
            Err(not_built(reference))
        }
        other => other,
    }
}

/// Resolve the first of `references` found in the layout at `layout_dir` for `arch`.
pub fn resolve_image(
    layout_dir: &Path,
    variant: &str,
    references: &[String],
    arch: &str,
) -> Result<ResolvedImage, RootfsError> {
    let not_built = || RootfsError::NotBuilt {
        variant: variant.to_string(),
        reference: references
            .first()
            .cloned()
            .unwrap_or_else(|| format!("{variant}:?")),
        layout: layout_dir.to_path_buf(),
    };
    let layout = match Layout::open(layout_dir) {
        Ok(l) => l,
        Err(LayoutError::Invalid { .. }) if !layout_dir.join("oci-layout").exists() => {
            return Err(not_built());
        }
        Err(e) => return Err(e.into()),
    };
    let names: Vec<String> = layout.refs()?.into_iter().map(|(n, _)| n).collect();
    let reference = references
        .iter()
        .find(|r| names.contains(r))
        .ok_or_else(not_built)?;
    image_for_arch(&layout, reference, arch)
}

/// The image `reference` names in `layout`, for `arch`.
pub fn image_for_arch(
    layout: &Layout,
    reference: &str,
    arch: &str,
) -> Result<ResolvedImage, RootfsError> {
    let found = layout.image(reference, &Platform::for_debian_arch(arch))?;
    let (manifest, config) = (&found.manifest, &found.config);
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(RootfsError::BadImage {
            path: layout.blob_path(&manifest.config.digest),
            message: format!(
                "{} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        });
    }
    let layers = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(l, diff_id)| LayerRef {
            blob: layout.blob_path(&l.digest),
            media_type: l.media_type.clone(),
            digest: l.digest,
            size: l.size,
            diff_id: *diff_id,
        })
        .collect();
    Ok(ResolvedImage {
        reference: found.reference,
        manifest: found.descriptor.digest,
        config: found.config,
        layers,
    })
}

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
        let rc = &self.config.config;
        let mut sb = Sandbox::new(self.root());
        sb.env = crate::oci::devcontainer::effective_env(rc);
        let spec = user
            .or(rc.user.as_deref())
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
        sb.cwd = rc.working_dir.clone().filter(|w| !w.is_empty());
        sb.tmpfs_tmp = true;
        sb.backend = super::Backend::Container;
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
    let rc = &config.config;
    rc.entrypoint
        .iter()
        .flatten()
        .chain(rc.cmd.iter().flatten())
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
