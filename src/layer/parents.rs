//! Refusing entries placed below a symlink or a file, in this layer or a lower one.
//!
//! Such an entry would be written through the link or over the file: umoci drops it
//! silently and `tar x` fails, so the image would not contain what the layer declares.

use std::collections::BTreeSet;

use super::entry::{Kind, LayerTree, rel_path};
use super::store::Lower;
use crate::spec::LayerFile;

/// Check that every entry's parents are directories (in this layer or, for parents this
/// layer only implies, in the layers below).
pub fn check(tree: &LayerTree, lower: &dyn Lower, spec: &LayerFile) -> Result<(), String> {
    let mut ok: BTreeSet<&str> = BTreeSet::new();
    for e in tree.entries() {
        let mut end = 0;
        while let Some(i) = e.path[end..].find('/') {
            end += i;
            let parent = &e.path[..end];
            end += 1;
            if ok.contains(parent) {
                continue;
            }
            if let Some(what) = not_a_dir(tree, lower, parent) {
                return Err(format!(
                    "{}: `/{}` is below `/{parent}`, which is {what}; an entry cannot be placed \
                     under a symlink or a file (write it under the link's target instead)",
                    field_of(spec, &e.path),
                    e.path
                ));
            }
            ok.insert(parent);
        }
    }
    Ok(())
}

fn not_a_dir(tree: &LayerTree, lower: &dyn Lower, p: &str) -> Option<String> {
    let kind = |k: &Kind| match k {
        Kind::Dir => None,
        Kind::Symlink(t) => Some(format!("a symlink to `{t}`")),
        Kind::Hardlink(_) | Kind::File(_) => Some("a file".to_string()),
        _ => Some("not a directory".to_string()),
    };
    match tree.get(p) {
        Some(e) if !tree.is_implicit(p) => kind(&e.kind).map(|w| format!("{w} in this layer")),
        _ => match lower.meta(p)?.t {
            'd' => None,
            'l' => Some("a symlink in a lower layer".into()),
            'f' | 'h' => Some("a file in a lower layer".into()),
            _ => Some("not a directory in a lower layer".into()),
        },
    }
}

/// The `layer.yaml` field that put `path` into the layer, for the error message.
fn field_of(spec: &LayerFile, path: &str) -> String {
    let under = |dest: &str| {
        rel_path(dest).is_some_and(|d| path == d || path.starts_with(&format!("{d}/")))
    };
    let pick = [
        spec.files
            .iter()
            .rposition(|f| under(&f.value.dest))
            .map(|i| format!("files[{i}].dest")),
        spec.directories
            .iter()
            .rposition(|d| rel_path(&d.value.path).as_deref() == Some(path))
            .map(|i| format!("directories[{i}].path")),
        spec.symlinks
            .iter()
            .rposition(|s| rel_path(&s.value.path).as_deref() == Some(path))
            .map(|i| format!("symlinks[{i}].path")),
        spec.archives
            .iter()
            .rposition(|a| under(&a.value.dest))
            .map(|i| format!("archives[{i}].dest")),
    ];
    pick.into_iter()
        .flatten()
        .next()
        .unwrap_or_else(|| "rootfs/".to_string())
}
