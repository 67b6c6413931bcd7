//! overlayfs mounts over extracted layers, unmounted on drop.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{RootfsError, io_err, require_root};

/// A mounted overlay; dropping it detaches the mount.
#[derive(Debug)]
pub struct Overlay {
    target: PathBuf,
    mounted: bool,
    /// The stand-in lower dir when none was given (removed after the unmount).
    _empty_lower: Option<tempfile::TempDir>,
}

/// Escape the characters overlayfs treats as separators in its option string.
fn escape(p: &Path) -> String {
    let mut out = String::new();
    for ch in p.to_string_lossy().chars() {
        if matches!(ch, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

/// The mount(2) data string for these dirs (`lowers` bottom first), checked against the
/// kernel's one-page limit.
pub fn mount_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, String> {
    // overlayfs lists the topmost lower first.
    let lower: Vec<String> = lowers.iter().rev().map(|p| escape(p)).collect();
    // index/redirect_dir/metacopy off: the upper dir stays a plain diff (whole files,
    // whiteouts and opaque dirs only), which is what a layer tarball can express.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=off,redirect_dir=off,metacopy=off",
        lower.join(":"),
        escape(upper),
        escape(work)
    );
    let limit = page_size();
    if opts.len() >= limit {
        return Err(format!(
            "the mount options for {} lower dirs are {} bytes, over the kernel's limit of {} (use a shorter cache path or fewer layers)",
            lowers.len(),
            opts.len(),
            limit - 1
        ));
    }
    Ok(opts)
}

/// Give `upper` the owner and mode of the topmost lower's root (0755 root:root without
/// lowers): the merged root takes them from the upper dir, and a fresh temp dir is 0700.
pub fn match_root(upper: &Path, lowers: &[PathBuf]) -> Result<(), RootfsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (uid, gid, mode) = match lowers.last() {
        Some(top) => {
            let m = std::fs::metadata(top).map_err(io_err(top))?;
            (m.uid(), m.gid(), m.mode() & 0o7777)
        }
        None => (0, 0, 0o755),
    };
    std::os::unix::fs::chown(upper, Some(uid), Some(gid)).map_err(io_err(upper))?;
    std::fs::set_permissions(upper, std::fs::Permissions::from_mode(mode)).map_err(io_err(upper))
}

impl Overlay {
    /// Mount `lowers` (bottom first; may be empty) with `upper` and `work` (same filesystem,
    /// `work` empty) on `target`. Needs root; the mount lives in the caller's namespace.
    pub fn mount(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<Overlay, RootfsError> {
        require_root("mounting an overlay")?;
        let err = |message: String| RootfsError::Mount {
            target: target.to_path_buf(),
            message,
        };
        let (lowers, empty) = if lowers.is_empty() {
            // overlayfs needs at least one lower dir. Next to `work`, so that whatever
            // removes the build's temp dir (even after a kill) removes this one too.
            let d = tempfile::Builder::new()
                .prefix("empty-lower-")
                .tempdir_in(work.parent().unwrap_or(Path::new("/tmp")))
                .map_err(|e| err(e.to_string()))?;
            (vec![d.path().to_path_buf()], Some(d))
        } else {
            (lowers.to_vec(), None)
        };
        let opts = mount_options(&lowers, upper, work).map_err(err)?;
        let c = |p: &[u8]| CString::new(p).map_err(|_| err("NUL in a path".into()));
        let (src, fstype, tgt, data) = (
            c(b"overlay")?,
            c(b"overlay")?,
            c(target.as_os_str().as_bytes())?,
            c(opts.as_bytes())?,
        );
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(err(format!(
                "mount failed: {e} (lowerdir count {}, upper {})",
                lowers.len(),
                upper.display()
            )));
        }
        Ok(Overlay {
            target: target.to_path_buf(),
            mounted: true,
            _empty_lower: empty,
        })
    }

    /// Where the merged tree is mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmount now and report failure (drop does the same silently).
    pub fn unmount(mut self) -> Result<(), RootfsError> {
        self.detach().map_err(|e| RootfsError::Mount {
            target: self.target.clone(),
            message: format!("unmount failed: {e}"),
        })
    }

    fn detach(&mut self) -> io::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        let tgt = CString::new(self.target.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("NUL in path"))?;
        // SAFETY: tgt is a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_put_the_top_layer_first_and_respect_the_page_limit() {
        let lowers = vec![PathBuf::from("/c/bottom"), PathBuf::from("/c/to:p")];
        let o = mount_options(&lowers, Path::new("/u"), Path::new("/w")).unwrap();
        assert_eq!(
            o,
            "lowerdir=/c/to\\:p:/c/bottom,upperdir=/u,workdir=/w,index=off,redirect_dir=off,metacopy=off"
        );
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/var/cache/hakim/rootfs/{i:064}")))
            .collect();
        let e = mount_options(&many, Path::new("/u"), Path::new("/w")).unwrap_err();
        assert!(e.contains("100 lower dirs") && e.contains("limit"), "{e}");
    }
}
