//! The layer cache key: stable for the same inputs, different when any input changes,
//! including the code that builds layers.

use std::path::Path;

use super::{Layer, LocalInputsMemo, code_hash, key_with_code, layer_key};
use crate::digest::Sha256Digest;
use crate::spec::{Compression, LayerFile};

fn layer_in(dir: &Path, yaml: &str) -> Layer {
    std::fs::write(dir.join("layer.yaml"), yaml).unwrap();
    Layer {
        name: "l".into(),
        dir: dir.to_path_buf(),
        file: dir.join("layer.yaml"),
        spec: serde_saphyr::from_str::<LayerFile>(yaml).unwrap(),
    }
}

const YAML: &str = "directories:\n  - path: /opt/x\n";

struct Inputs {
    code: &'static str,
    arch: &'static str,
    compression: Compression,
    epoch: u64,
    parent: Option<Sha256Digest>,
    extra: serde_json::Value,
}

fn base() -> Inputs {
    Inputs {
        code: "code-a",
        arch: "amd64",
        compression: Compression::Gzip,
        epoch: 0,
        parent: None,
        extra: serde_json::json!({"packages": ["a=1=amd64"]}),
    }
}

fn key(l: &Layer, i: &Inputs) -> Sha256Digest {
    key_with_code(
        i.code,
        l,
        i.arch,
        i.compression,
        i.epoch,
        i.parent.as_ref(),
        &i.extra,
    )
    .unwrap()
}

#[test]
fn same_inputs_give_the_same_key_and_the_public_key_uses_the_compiled_in_code_hash() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("rootfs/etc")).unwrap();
    std::fs::write(d.path().join("rootfs/etc/x"), "one").unwrap();
    let l = layer_in(d.path(), YAML);
    assert_eq!(key(&l, &base()), key(&l, &base()));
    let public = layer_key(
        &l,
        "amd64",
        Compression::Gzip,
        0,
        None,
        &base().extra,
        &LocalInputsMemo::default(),
    )
    .unwrap();
    let with_code = key(
        &l,
        &Inputs {
            code: super::LAYER_CODE,
            ..base()
        },
    );
    assert_eq!(public, with_code);
    assert_ne!(public, key(&l, &base()));
}

#[test]
fn every_input_changes_the_key() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("rootfs/etc")).unwrap();
    std::fs::write(d.path().join("rootfs/etc/x"), "one").unwrap();
    let l = layer_in(d.path(), YAML);
    let k0 = key(&l, &base());
    let variants: Vec<(&str, Inputs)> = vec![
        (
            "code hash",
            Inputs {
                code: "code-b",
                ..base()
            },
        ),
        (
            "arch",
            Inputs {
                arch: "arm64",
                ..base()
            },
        ),
        (
            "compression",
            Inputs {
                compression: Compression::Zstd,
                ..base()
            },
        ),
        ("epoch", Inputs { epoch: 1, ..base() }),
        (
            "parent",
            Inputs {
                parent: Some(Sha256Digest::of(b"p")),
                ..base()
            },
        ),
        (
            "extra",
            Inputs {
                extra: serde_json::json!({"packages": ["a=2=amd64"]}),
                ..base()
            },
        ),
    ];
    for (what, i) in variants {
        assert_ne!(key(&l, &i), k0, "changing the {what} kept the key");
    }

    std::fs::write(d.path().join("rootfs/etc/x"), "two").unwrap();
    assert_ne!(key(&l, &base()), k0, "changing a local file kept the key");
    std::fs::write(d.path().join("rootfs/etc/x"), "one").unwrap();
    assert_eq!(key(&l, &base()), k0);
    use std::os::unix::fs::PermissionsExt;
    let exe = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(d.path().join("rootfs/etc/x"), exe).unwrap();
    assert_ne!(
        key(&l, &base()),
        k0,
        "making a local file executable kept the key"
    );
    std::fs::set_permissions(
        d.path().join("rootfs/etc/x"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    let changed = layer_in(d.path(), "directories:\n  - path: /opt/y\n");
    assert_ne!(
        key(&changed, &base()),
        k0,
        "changing the definition kept the key"
    );
}

#[test]
fn the_compiled_in_code_hash_is_the_hash_of_the_current_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        code_hash::source_hash(root).unwrap(),
        super::LAYER_CODE,
        "build.rs did not rerun after a source change"
    );
}

/// A copy of the crate's `src/` and `Cargo.lock`, to edit without touching the real tree.
fn source_copy() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().unwrap();
    copy(&root.join("src"), &d.path().join("src"));
    std::fs::copy(root.join("Cargo.lock"), d.path().join("Cargo.lock")).unwrap();
    d
}

fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}

#[test]
fn editing_layer_building_code_changes_the_code_hash_and_editing_the_cli_does_not() {
    let d = source_copy();
    let h0 = code_hash::source_hash(d.path()).unwrap();
    assert_eq!(h0, super::LAYER_CODE);
    for f in [
        "src/layer/tarball.rs",
        "src/layer/install.rs",
        "src/layer/accounts.rs",
        "src/layer/diff.rs",
        "src/rootfs/overlay.rs",
        "src/build.rs",
        "Cargo.lock",
    ] {
        let p = d.path().join(f);
        let before =
            std::fs::read(&p).unwrap_or_else(|e| panic!("{f} moved? update this list: {e}"));
        append(&p, "\n// edited\n");
        assert_ne!(
            code_hash::source_hash(d.path()).unwrap(),
            h0,
            "editing {f} kept the hash"
        );
        std::fs::write(&p, before).unwrap();
    }
    // A new module is counted until someone lists it as unable to change layer bytes.
    std::fs::write(d.path().join("src/layer/new_step.rs"), "// new\n").unwrap();
    assert_ne!(
        code_hash::source_hash(d.path()).unwrap(),
        h0,
        "a new module was not counted"
    );
    std::fs::remove_file(d.path().join("src/layer/new_step.rs")).unwrap();
    append(&d.path().join("src/main.rs"), "\n// edited\n");
    assert_eq!(
        code_hash::source_hash(d.path()).unwrap(),
        h0,
        "the CLI edge counted"
    );
}
