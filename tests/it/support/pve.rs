//! A Proxmox VE simulation: PVE's OCI import rules (pve-container 6.1 `restore_oci_archive`,
//! as BRIEF §4 lists them) applied to an oci-archive `.tar`, and the result booted in LXC the
//! way PVE configures an application container: the image's Entrypoint+Cmd as `lxc.init.cmd`
//! and the CT env as `lxc.environment`.
//!
//! The rules, each an assertion here so that an image PVE would refuse fails the test:
//! - members are exactly `oci-layout`, `index.json` and `blobs/sha256/<hex>` (no `./`);
//! - the FIRST manifest of `index.json` is used, and it must be an image manifest;
//! - config and layer media types must be the OCI ones (tar, tar+gzip, tar+zstd);
//! - init command = Entrypoint + Cmd; `/sbin/init` (or nothing) makes a system container;
//! - the CT env = the image config's `Env` when the key is present (even empty: Perl tests
//!   the array ref), else the env given at create time.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::image::{Lxc, NetnsForward, lxc_base_config};
use super::{require_bin, run_ok};

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPES: [&str; 3] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
];

/// What PVE makes of an archive.
#[derive(Debug)]
pub struct Imported {
    /// `lxc.init.cmd` (application container) or `["/sbin/init"]`.
    pub init_cmd: Vec<String>,
    /// Whether PVE would make an application container.
    pub application: bool,
    /// The CT's env after the import.
    pub env: Vec<(String, String)>,
    /// The image config's `Env`, when the key is present.
    pub image_env: Option<Vec<String>>,
    /// The squashed root filesystem.
    pub rootfs: PathBuf,
}

fn member_ok(name: &str) -> bool {
    match name {
        "oci-layout" | "index.json" | "blobs/" | "blobs/sha256/" => true,
        _ => name.strip_prefix("blobs/sha256/").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }),
    }
}

/// Reads the archive's members into `dir` (a layout), checking their names as pct does.
fn unpack_members(archive: &Path, dir: &Path) {
    let mut tar = tar::Archive::new(fs::File::open(archive).unwrap());
    let mut names = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        assert!(
            member_ok(&name),
            "{}: member {name:?} is not oci-layout, index.json or blobs/sha256/<hex>: \
             pct would not treat this .tar as an OCI image",
            archive.display()
        );
        if entry.header().entry_type().is_file() {
            let dest = dir.join(&name);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            fs::write(dest, bytes).unwrap();
        }
        names.push(name);
    }
    for required in ["oci-layout", "index.json"] {
        assert!(
            names.iter().any(|n| n == required),
            "{}: no {required} member",
            archive.display()
        );
    }
}

fn blob_json(dir: &Path, digest: &str) -> serde_json::Value {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("digest {digest} is not sha256"));
    let path = dir.join("blobs/sha256").join(hex);
    serde_json::from_slice(&fs::read(&path).unwrap_or_else(|e| panic!("{digest}: {e}"))).unwrap()
}

/// Applies PVE's import rules to `archive` with `create_env` (what `pct create --env` or
/// Terraform's `environment_variables` gives); the rootfs lands in `work/rootfs`.
pub fn import(archive: &Path, create_env: &[(&str, &str)], work: &Path) -> Imported {
    require_bin("umoci", "umoci");
    let layout = work.join("layout");
    fs::create_dir_all(&layout).unwrap();
    unpack_members(archive, &layout);
    let index =
        serde_json::from_slice::<serde_json::Value>(&fs::read(layout.join("index.json")).unwrap())
            .unwrap();
    let first = &index["manifests"][0];
    assert_eq!(
        first["mediaType"], MEDIA_MANIFEST,
        "PVE reads the first entry of index.json and needs an image manifest there: {index}"
    );
    let manifest = blob_json(&layout, first["digest"].as_str().unwrap());
    assert_eq!(
        manifest["config"]["mediaType"], MEDIA_CONFIG,
        "config media type: {manifest}"
    );
    for l in manifest["layers"].as_array().unwrap() {
        let mt = l["mediaType"].as_str().unwrap_or_default();
        assert!(
            LAYER_TYPES.contains(&mt),
            "layer media type {mt} is rejected by PVE"
        );
    }
    let config = blob_json(&layout, manifest["config"]["digest"].as_str().unwrap());
    let rc = &config["config"];
    let argv: Vec<String> = ["Entrypoint", "Cmd"]
        .iter()
        .flat_map(|k| rc[*k].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let application = !argv.is_empty() && argv[0] != "/sbin/init";
    let image_env = rc.get("Env").filter(|v| !v.is_null()).map(|v| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    });
    let env = match &image_env {
        Some(lines) => lines
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        None => create_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    // Squash the layers (whiteouts honoured) with umoci, through an index naming only the
    // manifest PVE picked.
    let mut picked = first.clone();
    picked["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "pve"});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [picked]}))
            .unwrap(),
    )
    .unwrap();
    let bundle = work.join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:pve", layout.display()))
            .arg(&bundle),
    );
    let rootfs = work.join("rootfs");
    fs::rename(bundle.join("rootfs"), &rootfs).unwrap();
    let _ = fs::remove_dir_all(&bundle);
    let _ = fs::remove_dir_all(&layout);
    Imported {
        init_cmd: if application {
            argv
        } else {
            vec!["/sbin/init".into()]
        },
        application,
        env,
        image_env,
        rootfs,
    }
}

/// Writes the CT's LXC config as PVE would for `imp` with `env`, plus bind mounts
/// (`host dir`, `path in the CT`) as PVE writes mount points.
pub fn configure(ct: &Lxc, imp: &Imported, env: &[(String, String)], mounts: &[(&Path, &str)]) {
    let mut config = lxc_base_config(&ct.name, &imp.rootfs, &ct.dir().join("console.log"));
    config.push_str(&format!("lxc.init.cmd = {}\n", imp.init_cmd.join(" ")));
    for (k, v) in env {
        config.push_str(&format!("lxc.environment = {k}={v}\n"));
    }
    for (host, inside) in mounts {
        config.push_str(&format!(
            "lxc.mount.entry = {} {} none bind,create=dir 0 0\n",
            host.display(),
            inside.trim_start_matches('/')
        ));
    }
    fs::create_dir_all(ct.dir()).unwrap();
    fs::write(ct.dir().join("config"), config).unwrap();
}

/// Starts the CT and makes the host's 127.0.0.1:`port` reachable inside it.
pub fn start(ct: &Lxc, port: u16) -> NetnsForward {
    ct.start();
    NetnsForward::start(ct.init_pid(), port)
}
