//! The image env as a file in the image, so the config can carry no `Env` key.
//!
//! Proxmox's OCI import replaces the env given at create time (the Coder agent token) with the
//! config's `Env` whenever that key exists, even empty. Images with `config.env_file` therefore
//! omit the key and ship the env as `KEY=VALUE` lines that the entrypoint and login shells read
//! as defaults, never overriding what the runtime set.

use std::collections::BTreeMap;

use crate::layer::entry::{Content, Entry, Kind};

/// The file's text: a comment line, then one `KEY=VALUE` line per variable, sorted.
pub fn text(env: &BTreeMap<String, String>) -> String {
    let mut out = String::from(
        "# The image's environment (config.env), written by hakim. Defaults only: a variable\n\
         # the runtime already set is never overridden.\n",
    );
    for (k, v) in env {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

/// Tar entries of a layer holding only the env file at `path` (root-owned, 0644), with its
/// parent directories.
pub fn layer_entries(path: &str, env: &BTreeMap<String, String>) -> Vec<Entry> {
    let rel = path.trim_start_matches('/');
    let mut entries: Vec<Entry> = std::path::Path::new(rel)
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .map(|a| Entry::new(a.to_string_lossy(), Kind::Dir, 0o755))
        .collect();
    entries.reverse();
    entries.push(Entry::new(
        rel,
        Kind::File(Content::Bytes(text(env).into_bytes())),
        0o644,
    ));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_sorted_key_value_lines_after_a_comment() {
        let env = BTreeMap::from([
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ]);
        let t = text(&env);
        let lines: Vec<&str> = t.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["LANG=C.UTF-8", "PATH=/usr/bin:/bin"]);
    }

    #[test]
    fn layer_has_parents_first_then_the_file() {
        let e = layer_entries("/usr/lib/hakim/image.env", &BTreeMap::new());
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["usr", "usr/lib", "usr/lib/hakim", "usr/lib/hakim/image.env"]
        );
        assert!(matches!(e[3].kind, Kind::File(_)));
        assert_eq!((e[3].mode, e[3].uid, e[0].mode), (0o644, 0, 0o755));
    }
}
