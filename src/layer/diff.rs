//! Turning an overlay upper dir (what a build step changed) into layer entries.

use std::path::Path;

use super::entry::{Entry, Kind};
use super::walk::{Ownership, walk};
use crate::rootfs::{RootfsError, io_err};

/// Layer entries for an overlay upper dir: files as they are (owner, mode, mtime, xattrs),
/// 0/0 character devices as [`Kind::Whiteout`], and each directory marked
/// `trusted.overlay.opaque=y` as its `Dir` entry followed by a [`Kind::Opaque`] entry.
/// The result is in tar order, ready for [`crate::layer::tarball::write_layer`].
pub fn upper_to_entries(upper: &Path) -> Result<Vec<Entry>, RootfsError> {
    let walked = walk(upper, "", Ownership::Keep).map_err(io_err(upper))?;
    let mut out = Vec::with_capacity(walked.len());
    for e in walked {
        match e.kind {
            Kind::Char(0, 0) => out.push(Entry::new(e.path, Kind::Whiteout, 0)),
            Kind::Dir => {
                let full = upper.join(&e.path);
                let opaque = xattr::get(&full, "trusted.overlay.opaque").map_err(io_err(&full))?;
                let path = e.path.clone();
                out.push(e);
                if opaque.as_deref() == Some(b"y") {
                    out.push(Entry::new(path, Kind::Opaque, 0));
                }
            }
            _ => out.push(e),
        }
    }
    Ok(out)
}
