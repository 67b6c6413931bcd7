//! Compiles in HAKIM_LAYER_CODE, the hash of the source that can shape layer bytes (see
//! `src/layer/code_hash.rs`), so layers cached by another build of hakim are never reused.

#[path = "src/layer/code_hash.rs"]
mod code_hash;

fn main() {
    let root = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo"));
    let hash = code_hash::source_hash(&root).expect("reading the source tree");
    println!("cargo:rustc-env=HAKIM_LAYER_CODE={hash}");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.lock");
}
