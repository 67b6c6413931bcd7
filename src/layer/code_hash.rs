//! The hash of the source that can shape layer bytes, shared by `build.rs` (which compiles it in
//! as HAKIM_LAYER_CODE) and the tests that check the compiled-in value is current.
//!
//! Everything under `src/` counts except [`NOT_LAYER_CODE`], which only moves finished blobs or
//! talks to users. Listing what is left out (rather than what is in) fails safe: a new module is
//! part of the hash until someone shows it cannot change layer bytes. `Cargo.lock` counts too:
//! compressor and tar crate versions change bytes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Paths under the crate root that cannot change a layer's bytes: the CLI edge, publishing,
/// downloads (whose content is sha256-verified before any layer sees it).
pub const NOT_LAYER_CODE: &[&str] = &[
    "src/main.rs",
    "src/cli",
    "src/publish",
    "src/fetch.rs",
    "src/net",
    "src/net.rs",
];

fn collect(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap_or(&p);
        if NOT_LAYER_CODE.iter().any(|x| rel == Path::new(x)) {
            continue;
        }
        if p.is_dir() {
            collect(&p, root, out)?;
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// Hex sha256 over the length-prefixed relative path and content of every layer-shaping file
/// under `root` (a crate root holding `src/` and `Cargo.lock`).
pub fn source_hash(root: &Path) -> io::Result<String> {
    let mut files = Vec::new();
    collect(&root.join("src"), root, &mut files)?;
    files.push(root.join("Cargo.lock"));
    let mut h = Sha256::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap_or(f);
        let bytes = fs::read(f)?;
        for part in [rel.to_string_lossy().as_bytes(), &bytes[..]] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
