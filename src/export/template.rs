//! The system-container template: the variant's `rootfs:` blocks applied to the flattened
//! tree as one extra layer, then checked (`require:`), with root's password kept locked.

use std::collections::BTreeSet;
use std::path::Path;

use super::ExportError;
use super::flatten::{NodeKind, Tree};
use crate::layer::accounts::AccountDb;
use crate::layer::entry::{Content, Entry, Kind, rel_path};
use crate::layer::resolve_owner;
use crate::layer::walk::{self, Ownership};
use crate::spec::RootfsPart;

const SHADOW: &str = "etc/shadow";

/// Files whose contents the template needs from the image (accounts, os-release).
pub(crate) fn wanted_files() -> BTreeSet<String> {
    [
        "etc/passwd",
        "etc/group",
        SHADOW,
        "etc/gshadow",
        "etc/os-release",
        "usr/lib/os-release",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn err(file: &Path, message: impl Into<String>) -> ExportError {
    ExportError::Template {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

/// `*` and `?` within one path component.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pat[1..], s) || (!s.is_empty() && glob(pat, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pat[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

fn matches(tree: &Tree, pattern: &str) -> Vec<String> {
    let Some(pat) = rel_path(pattern) else {
        return Vec::new();
    };
    let parts: Vec<&str> = pat.split('/').collect();
    tree.nodes
        .keys()
        .filter(|k| {
            let ks: Vec<&str> = k.split('/').collect();
            ks.len() == parts.len()
                && ks
                    .iter()
                    .zip(&parts)
                    .all(|(k, p)| glob(p.as_bytes(), k.as_bytes()))
        })
        .cloned()
        .collect()
}

fn text(tree: &Tree, path: &str) -> String {
    String::from_utf8_lossy(tree.captured(path).unwrap_or_default()).into_owned()
}

/// Apply every block in order, then root's login, then check `require:`.
pub(crate) fn apply(tree: &mut Tree, parts: &[RootfsPart], epoch: u64) -> Result<(), ExportError> {
    for part in parts {
        apply_part(tree, part, epoch)?;
    }
    root_login(tree, parts, epoch)?;
    for part in parts {
        for p in &part.spec.require {
            if tree.resolve(p).is_none() {
                return Err(err(
                    &part.file,
                    format!("rootfs.require: `{p}` is not in the image"),
                ));
            }
        }
    }
    Ok(())
}

fn apply_part(tree: &mut Tree, part: &RootfsPart, epoch: u64) -> Result<(), ExportError> {
    let spec = &part.spec;
    for pattern in &spec.remove {
        for path in matches(tree, pattern) {
            tree.add_synthetic(Entry::new(path, Kind::Whiteout, 0));
        }
    }
    for p in &spec.empty {
        let path = rel_path(p).unwrap_or_default();
        let mut e = Entry::new(path.clone(), Kind::File(Content::Bytes(Vec::new())), 0o444);
        e.mtime = epoch;
        match tree.nodes.get(&path) {
            Some(n) if matches!(n.kind, NodeKind::File(_)) => {
                (e.mode, e.uid, e.gid) = (n.meta.mode, n.meta.uid, n.meta.gid);
                e.xattrs = n.meta.xattrs.clone();
            }
            Some(_) => {
                return Err(err(
                    &part.file,
                    format!("rootfs.empty: `{p}` is not a regular file in the image"),
                ));
            }
            None => {}
        }
        tree.add_synthetic(e);
    }
    let db = AccountDb {
        passwd: text(tree, "etc/passwd"),
        group: text(tree, "etc/group"),
        shadow: String::new(),
        gshadow: String::new(),
    };
    for f in &spec.files {
        let src = part.dir.join(&f.src);
        let dest = rel_path(&f.dest).unwrap_or_default();
        let (uid, gid) = match &f.owner {
            Some(o) => resolve_owner(o, Some(&db)).map_err(|m| err(&part.file, m))?,
            None => (0, 0),
        };
        let entries = walk::walk(&src, &dest, Ownership::Normalize)
            .map_err(|e| err(&part.file, format!("{}: {e}", src.display())))?;
        for mut e in entries {
            let existing_dir = tree
                .nodes
                .get(&e.path)
                .is_some_and(|n| n.kind == NodeKind::Dir);
            if matches!(e.kind, Kind::Dir) && existing_dir {
                continue; // keep the image's owner and mode
            }
            (e.uid, e.gid, e.mtime) = (uid, gid, epoch);
            if let (Some(m), false) = (f.mode, matches!(e.kind, Kind::Dir | Kind::Symlink(_))) {
                e.mode = m.0;
            }
            tree.add_synthetic(e);
        }
    }
    for s in &spec.symlinks {
        let mut e = Entry::new(
            rel_path(&s.path).unwrap_or_default(),
            Kind::Symlink(s.target.clone()),
            0o777,
        );
        e.mtime = epoch;
        tree.add_synthetic(e);
    }
    Ok(())
}

/// Root's password: the YAML hash when given, else locked; never an image's own password.
fn root_login(tree: &mut Tree, parts: &[RootfsPart], epoch: u64) -> Result<(), ExportError> {
    let roots: Vec<_> = parts
        .iter()
        .filter_map(|p| p.spec.root.as_ref().map(|r| (p, r)))
        .collect();
    let hash = roots
        .iter()
        .rev()
        .find_map(|(_, r)| r.password_hash.clone());
    let keys: Vec<&String> = roots.iter().flat_map(|(_, r)| &r.authorized_keys).collect();
    let Some(node) = tree.nodes.get(SHADOW).cloned() else {
        // No shadow file: no password to lock, but a hash asked for cannot be set.
        if let (Some(_), Some((p, _))) = (&hash, roots.last()) {
            return Err(err(
                &p.file,
                "rootfs.root.password_hash: the image has no /etc/shadow",
            ));
        }
        return authorized_keys(tree, &keys, epoch);
    };
    let old = text(tree, SHADOW);
    let mut changed = false;
    let lines: Vec<String> = old
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&"root") || f.len() < 2 {
                return l.to_string();
            }
            let locked = f[1].starts_with(['*', '!']);
            let want = match &hash {
                Some(h) => h.as_str(),
                None if locked => f[1],
                None => "*",
            };
            if f[1] != want {
                changed = true;
                f[1] = want;
            }
            f.join(":")
        })
        .collect();
    if changed {
        let mut e = Entry::new(
            SHADOW,
            Kind::File(Content::Bytes(
                format!("{}\n", lines.join("\n")).into_bytes(),
            )),
            node.meta.mode,
        );
        (e.uid, e.gid, e.mtime) = (node.meta.uid, node.meta.gid, epoch);
        tree.add_synthetic(e);
    }
    authorized_keys(tree, &keys, epoch)
}

fn authorized_keys(tree: &mut Tree, keys: &[&String], epoch: u64) -> Result<(), ExportError> {
    if !keys.is_empty() {
        if !tree.nodes.contains_key("root/.ssh") {
            let mut d = Entry::new("root/.ssh", Kind::Dir, 0o700);
            d.mtime = epoch;
            tree.add_synthetic(d);
        }
        let body: String = keys.iter().map(|k| format!("{}\n", k.trim())).collect();
        let mut e = Entry::new(
            "root/.ssh/authorized_keys",
            Kind::File(Content::Bytes(body.into_bytes())),
            0o600,
        );
        e.mtime = epoch;
        tree.add_synthetic(e);
    }
    Ok(())
}

/// The `ID=` of the image's os-release (`/etc/os-release`, symlinks followed).
pub(crate) fn os_id(tree: &Tree) -> Option<String> {
    let (path, _) = tree.resolve("etc/os-release")?;
    let text = text(tree, path);
    text.lines()
        .find_map(|l| l.strip_prefix("ID="))
        .map(|v| v.trim_matches(['"', '\'']).to_string())
}

#[cfg(test)]
mod tests {
    use super::super::flatten::tests::{contents, layer};
    use super::*;
    use crate::spec::{RootLogin, RootfsSpec};

    fn export(
        shadow: &str,
        root: Option<RootLogin>,
    ) -> std::collections::BTreeMap<String, (tar::EntryType, String)> {
        let d = tempfile::tempdir().unwrap();
        let layers = vec![layer(
            d.path(),
            "1",
            &[
                ("etc/shadow", tar::EntryType::Regular, shadow),
                (
                    "etc/ssh/ssh_host_rsa_key",
                    tar::EntryType::Regular,
                    "secret",
                ),
                ("etc/ssh/sshd_config", tar::EntryType::Regular, "keep"),
                ("etc/machine-id", tar::EntryType::Regular, "0123"),
            ],
        )];
        let mut tree = Tree::read(&layers, &wanted_files(), None).unwrap();
        let part = RootfsPart {
            dir: d.path().to_path_buf(),
            file: d.path().join("layer.yaml"),
            spec: RootfsSpec {
                remove: vec!["/etc/ssh/ssh_host_*".into()],
                empty: vec!["/etc/machine-id".into()],
                require: vec!["/etc/ssh/sshd_config".into()],
                root,
                ..RootfsSpec::default()
            },
        };
        apply(&mut tree, &[part], 7).unwrap();
        contents(&tree.write(&layers, Vec::new()).unwrap())
    }

    #[test]
    fn root_stays_locked_unless_a_hash_is_given() {
        let got = export("root:$6$known$hash:1::::::\nx:y:1::::::\n", None);
        assert_eq!(got["etc/shadow"].1, "root:*:1::::::\nx:y:1::::::\n");
        assert!(!got.contains_key("etc/ssh/ssh_host_rsa_key"));
        assert_eq!(got["etc/ssh/sshd_config"].1, "keep");
        assert_eq!(got["etc/machine-id"].1, "");
        let got = export("root:!:1::::::\n", None);
        assert_eq!(
            got["etc/shadow"].1, "root:!:1::::::\n",
            "already locked: kept"
        );
        let hash = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7";
        let got = export(
            "root:*:1::::::\n",
            Some(RootLogin {
                password_hash: Some(hash.into()),
                authorized_keys: vec!["ssh-ed25519 AAAA admin".into()],
            }),
        );
        assert_eq!(got["etc/shadow"].1, format!("root:{hash}:1::::::\n"));
        assert_eq!(
            got["root/.ssh/authorized_keys"].1,
            "ssh-ed25519 AAAA admin\n"
        );
    }

    #[test]
    fn globs_stay_within_a_component() {
        assert!(glob(b"ssh_host_*", b"ssh_host_rsa_key.pub"));
        assert!(glob(b"?at", b"cat"));
        assert!(!glob(b"ssh_host_*", b"sshd_config"));
        assert!(glob(b"*", b""));
    }
}
