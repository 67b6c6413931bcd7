//! The `rootfs:` block: the system-container template `hakim export rootfs` lays over the
//! flattened image (on a layer or a variant; never part of the image layers themselves).

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::{FileSpec, SourcePos, SpecError, SymlinkSpec, check_image_path, check_owner};

/// What a rootfs export changes and checks, in the order: remove, empty, files, symlinks.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// Files copied from next to the YAML file declaring the block.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Symlinks to create (e.g. enabling a unit).
    #[serde(default)]
    pub symlinks: Vec<SymlinkSpec>,
    /// Absolute paths to delete; `*` and `?` match within one path component.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Files left empty (created 0444 when missing), e.g. `/etc/machine-id`.
    #[serde(default)]
    pub empty: Vec<String>,
    /// Paths that must exist in the result (symlinks followed), else the export fails.
    #[serde(default)]
    pub require: Vec<String>,
    /// Root login; the root password stays locked unless this sets a hash.
    pub root: Option<RootLogin>,
}

/// How root may log in to a rootfs export.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RootLogin {
    /// A crypt(3) hash (`$y$…`, `$6$…`) for root's password; never a plain password.
    pub password_hash: Option<String>,
    /// Lines for `/root/.ssh/authorized_keys`.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
}

/// One `rootfs:` block and the directory its `files:` are relative to.
#[derive(Clone, Debug, PartialEq)]
pub struct RootfsPart {
    /// Directory of the declaring YAML file.
    pub dir: PathBuf,
    /// The YAML file (for error messages).
    pub file: PathBuf,
    /// The block.
    pub spec: RootfsSpec,
}

/// Check a `rootfs:` block declared in `file`, with `files:` sources under `dir`.
pub(crate) fn validate(
    dir: &Path,
    file: &Path,
    block: &Spanned<RootfsSpec>,
) -> Result<(), SpecError> {
    let pos = SourcePos::at(file, block.referenced);
    let bad = |field: String, m: String| SpecError::invalid(pos.clone(), &field, m);
    let spec = &block.value;
    for (i, f) in spec.files.iter().enumerate() {
        check_image_path(&f.dest).map_err(|m| bad(format!("rootfs.files[{i}].dest"), m))?;
        let src = Path::new(&f.src);
        if src.is_absolute() || src.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(bad(
                format!("rootfs.files[{i}].src"),
                "must be a relative path inside the directory of this file".into(),
            ));
        }
        if fs::symlink_metadata(dir.join(src)).is_err() {
            return Err(bad(
                format!("rootfs.files[{i}].src"),
                format!("{} does not exist", dir.join(src).display()),
            ));
        }
        if let Some(o) = &f.owner {
            check_owner(o).map_err(|m| bad(format!("rootfs.files[{i}].owner"), m))?;
        }
    }
    for (i, s) in spec.symlinks.iter().enumerate() {
        check_image_path(&s.path).map_err(|m| bad(format!("rootfs.symlinks[{i}].path"), m))?;
    }
    for (field, list) in [
        ("remove", &spec.remove),
        ("empty", &spec.empty),
        ("require", &spec.require),
    ] {
        for (i, p) in list.iter().enumerate() {
            check_image_path(p).map_err(|m| bad(format!("rootfs.{field}[{i}]"), m))?;
            if p.trim_matches('/').is_empty() {
                return Err(bad(
                    format!("rootfs.{field}[{i}]"),
                    "must not be the root directory".into(),
                ));
            }
        }
    }
    if let Some(root) = &spec.root {
        if let Some(h) = &root.password_hash {
            check_password_hash(h).map_err(|m| bad("rootfs.root.password_hash".into(), m))?;
        }
        for (i, k) in root.authorized_keys.iter().enumerate() {
            if k.trim().is_empty() || k.contains('\n') {
                return Err(bad(
                    format!("rootfs.root.authorized_keys[{i}]"),
                    "must be one non-empty line".into(),
                ));
            }
        }
    }
    Ok(())
}

/// A password hash must be a crypt(3) string, so a plain password is never shipped.
fn check_password_hash(h: &str) -> Result<(), String> {
    let fields: Vec<&str> = h.split('$').collect();
    let ok = h.starts_with('$')
        && fields.len() >= 4
        && !fields[1].is_empty()
        && fields.last().is_some_and(|s| s.len() >= 22)
        && !h.contains([':', '\n', ' ']);
    if ok {
        Ok(())
    } else {
        Err("must be a crypt(3) hash such as `$y$…` or `$6$…` (see mkpasswd(1)), never a plain password".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_must_be_crypt_strings() {
        assert!(check_password_hash("$6$salt$AbCdEfGhIjKlMnOpQrStUvWxYz0123456789").is_ok());
        assert!(
            check_password_hash(
                "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7"
            )
            .is_ok()
        );
        for bad in ["hunter2", "", "*", "!", "$6$short$abc", "$6$s$a:b"] {
            assert!(check_password_hash(bad).is_err(), "{bad}");
        }
    }
}
