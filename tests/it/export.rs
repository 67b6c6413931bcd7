//! `hakim export` with the real tools its users have: pct's member-name rules and skopeo for
//! the OCI archive, `lxc-create -t oci` booting it through the entrypoint to the fake Coder
//! server, the rootfs tarball booted as a privileged and an unprivileged LXC system container
//! and created with `lxc-create -t local`, `podman load` for the docker archive, a whiteout
//! fixture flattened exactly as `umoci unpack` does, and bad input that fails cleanly.
//!
//! Needs root, skopeo, umoci, jq, lxc, podman, runc, xz-utils, zstd and the Debian mirror for
//! `hakim build base`; a missing prerequisite fails loudly.

use crate::support;
use crate::support::entrypoint_harness::{assert_default_agent, new_token, write_file};
use crate::support::fake_coder::{FakeCoder, Options};
use crate::support::image::{
    IDMAP_BASE, Lxc, NetnsForward, Podman, built_base, ensure_subids, lxc_create_oci, url_port,
};
use crate::support::{json, require_bin, run_err, run_ok};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const ENTRYPOINT: &str = "/usr/local/bin/hakim-entrypoint";
const BOOT_WAIT: Duration = Duration::from_secs(120);

/// `hakim --out <the built base's out> export …`.
fn hakim_export(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hakim"));
    c.arg("--project")
        .arg(support::repo_root())
        .arg("--out")
        .arg(built_base().out.path())
        .arg("export")
        .args(args);
    c
}

/// A scratch directory for exports, kept for the whole test process.
fn export_dir(name: &str) -> PathBuf {
    let d = built_base().out.path().join("exports").join(name);
    fs::create_dir_all(&d).unwrap();
    d
}

/// The OCI archive of hakim-base (default name, `--json`), made once.
fn oci_archive() -> &'static (PathBuf, serde_json::Value) {
    static A: OnceLock<(PathBuf, serde_json::Value)> = OnceLock::new();
    A.get_or_init(|| {
        let dir = export_dir("oci");
        let out = run_ok(&mut hakim_export(&[
            "oci-archive",
            "base",
            "--json",
            "-o",
            dir.to_str().unwrap(),
        ]));
        let report = json(&out);
        (dir.join("hakim-base_latest.tar"), report)
    })
}

/// The zstd rootfs of hakim-base (quick to make; what the boot tests extract), made once.
fn rootfs_zst() -> &'static PathBuf {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        require_bin("zstd", "zstd");
        let dir = export_dir("rootfs-zst");
        run_ok(&mut hakim_export(&[
            "rootfs",
            "base",
            "--compression",
            "zstd",
            "-o",
            dir.to_str().unwrap(),
        ]));
        dir.join("hakim-base-trixie-amd64.tar.zst")
    })
}

fn tar_list(file: &Path) -> Vec<String> {
    require_bin("tar", "tar");
    let out = run_ok(Command::new("tar").arg("-tf").arg(file));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn sha256sum_check(dir: &Path, list: &str) {
    require_bin("sha256sum", "coreutils");
    run_ok(
        Command::new("sha256sum")
            .arg("-c")
            .arg(list)
            .current_dir(dir),
    );
}

#[test]
fn oci_archive_is_what_pct_and_skopeo_accept() {
    let (file, report) = oci_archive();
    let names = tar_list(file);
    assert_eq!(names[..2], ["oci-layout", "index.json"], "{names:?}");
    let blob = regex::Regex::new("^blobs/sha256/[0-9a-f]{64}$").unwrap();
    assert!(names[2..].iter().all(|n| blob.is_match(n)), "{names:?}");
    let index = run_ok(Command::new("tar").arg("-xOf").arg(file).arg("index.json"));
    let index: serde_json::Value = serde_json::from_slice(&index.stdout).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(
        manifests[0]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(manifests[0]["platform"]["architecture"], "amd64");
    // skopeo reads it, and it is the image the layout holds.
    require_bin("skopeo", "skopeo");
    let out = run_ok(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", file.display())),
    );
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["Digest"], manifests[0]["digest"]);
    let layers = inspect["Layers"].as_array().unwrap();
    assert_eq!(
        names.len(),
        2 + 1 + 1 + layers.len(),
        "manifest+config+layers"
    );
    // Every JSON document in it is valid per the OCI schemas.
    let unpacked = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(file)
            .arg("-C")
            .arg(unpacked.path()),
    );
    support::validate_layout(unpacked.path());
    // --json: path, size, sha256 — and the checksum files agree with the bytes.
    assert_eq!(report["path"], file.to_str().unwrap());
    assert_eq!(report["size"], fs::metadata(file).unwrap().len());
    let sha = report["sha256"].as_str().unwrap();
    assert!(sha.len() == 71 || sha.len() == 64, "{sha}");
    let dir = file.parent().unwrap();
    sha256sum_check(dir, "hakim-base_latest.tar.sha256");
    sha256sum_check(dir, "sha256sums.txt");
    // Reproducible: a second export gives the same bytes.
    let again = export_dir("oci-again");
    run_ok(&mut hakim_export(&[
        "oci-archive",
        "base",
        "-o",
        again.to_str().unwrap(),
    ]));
    assert!(
        fs::read(file).unwrap() == fs::read(again.join("hakim-base_latest.tar")).unwrap(),
        "two exports of one build differ"
    );
}

#[test]
fn oci_archive_imported_like_proxmox_runs_the_entrypoint_to_coder() {
    let (file, _) = oci_archive();
    for bin in ["skopeo", "umoci", "jq"] {
        require_bin(bin, bin);
    }
    let ct = Lxc::new("hakim-xoci");
    let server = FakeCoder::start(Options::default());
    let token = new_token();
    let url = server.access_url();
    // What PVE writes for an application container: Entrypoint+Cmd as init, env as given.
    let console = lxc_create_oci(
        &ct,
        file,
        ENTRYPOINT,
        &[("CODER_AGENT_URL", &url), ("CODER_AGENT_TOKEN", &token)],
    );
    ct.start();
    let _fwd = NetnsForward::start(ct.init_pid(), url_port(&url));
    let report = server
        .wait_report("start", Duration::from_secs(90), || {})
        .unwrap_or_else(|| {
            panic!(
                "the agent never reported; requests {:?}\n{}\n{}",
                server.paths(),
                ct.log(),
                fs::read_to_string(&console).unwrap_or_default()
            )
        });
    assert_default_agent(&report, &token, &url);
    // The image Env reached the entrypoint (and so PID 1): the agent sees the image's PATH.
    let environ = fs::read(format!("/proc/{}/environ", ct.init_pid())).unwrap();
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    assert!(environ.contains("LANG=en_US.UTF-8"), "{environ}");
}

/// Extracts a rootfs tarball into `dest` as Proxmox does, optionally shifted into the
/// unprivileged id range (extracting inside a user namespace, like `lxc-usernsexec`).
fn extract(tarball: &Path, dest: &Path, shifted: bool) {
    fs::create_dir_all(dest).unwrap();
    let mut c = if shifted {
        require_bin("lxc-usernsexec", "lxc");
        ensure_subids();
        std::os::unix::fs::chown(dest, Some(IDMAP_BASE), Some(IDMAP_BASE)).unwrap();
        let mut c = Command::new("lxc-usernsexec");
        let map = format!("{IDMAP_BASE}");
        c.args(["-m", &format!("b:0:{map}:65536"), "--", "tar"]);
        c
    } else {
        Command::new("tar")
    };
    c.args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tarball)
        .arg("-C")
        .arg(dest);
    run_ok(&mut c);
}

/// The system-container template holds in the tarball: DHCP, agent enabled, systemd init,
/// no host keys, empty machine-id, os-release, root locked, no whiteouts.
#[test]
fn rootfs_tarball_is_a_system_container_template() {
    let file = rootfs_zst();
    let names = tar_list(file);
    assert!(
        !names.iter().any(|n| n.contains("ssh_host_")),
        "SSH host keys in the tarball"
    );
    assert!(!names.iter().any(|n| n.contains(".wh.")), "whiteouts left");
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("./") || n.starts_with('/'))
    );
    let dir = file.parent().unwrap();
    sha256sum_check(dir, "sha256sums.txt");
    sha256sum_check(dir, "hakim-base-trixie-amd64.tar.zst.sha256");
    let root = tempfile::tempdir().unwrap();
    extract(file, root.path(), false);
    let r = root.path();
    let interfaces = fs::read_to_string(r.join("etc/network/interfaces")).unwrap();
    for line in [
        "iface lo inet loopback",
        "source /etc/network/interfaces.d/*",
        "auto eth0",
        "iface eth0 inet dhcp",
    ] {
        assert!(
            interfaces.lines().any(|l| l.trim() == line),
            "{line}:\n{interfaces}"
        );
    }
    let init = fs::canonicalize(r.join("usr/sbin/init")).unwrap();
    assert!(init.ends_with("lib/systemd/systemd"), "{}", init.display());
    assert!(r.join("usr/sbin/ifup").is_file() && r.join("usr/sbin/dhclient").is_file());
    let wants = r.join("etc/systemd/system/multi-user.target.wants/hakim-agent.service");
    assert!(
        fs::metadata(&wants).is_ok(),
        "hakim-agent.service not enabled"
    );
    assert_eq!(fs::metadata(r.join("etc/machine-id")).unwrap().len(), 0);
    let os = fs::read_to_string(r.join("usr/lib/os-release")).unwrap();
    assert!(os.lines().any(|l| l == "ID=debian"), "{os}");
    let shadow = fs::read_to_string(r.join("etc/shadow")).unwrap();
    let root_pw = shadow
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    assert!(root_pw.starts_with(['*', '!']), "root password not locked");
    // Owners and setuid bits survive flattening.
    let sudo = fs::metadata(r.join("usr/bin/sudo")).unwrap();
    assert_eq!((sudo.uid(), sudo.mode() & 0o4000), (0, 0o4000));
    let home = fs::metadata(r.join("home/coder")).unwrap();
    assert_eq!(home.uid(), 1000);
}

fn lxc_system_config(ct: &Lxc, rootfs: &Path, unprivileged: bool) -> String {
    let mut c = support::image::lxc_base_config(&ct.name, rootfs, &ct.dir().join("console.log"));
    if unprivileged {
        c.push_str(&format!(
            "lxc.include = /usr/share/lxc/config/debian.userns.conf\n\
             lxc.idmap = u 0 {IDMAP_BASE} 65536\nlxc.idmap = g 0 {IDMAP_BASE} 65536\n"
        ));
    }
    c
}

fn boot_and_check(ct: &Lxc) {
    ct.start();
    let state = ct.wait_booted(BOOT_WAIT);
    assert!(state == "running" || state == "degraded", "{state}");
    let enabled = ct.attach(30, &["systemctl", "is-enabled", "hakim-agent.service"]);
    assert_eq!(
        String::from_utf8_lossy(&enabled.stdout).trim(),
        "enabled",
        "{}",
        ct.log()
    );
    let keys = ct.attach(30, &["sh", "-c", "ls /etc/ssh/ssh_host_*_key"]);
    // Host keys are made at first boot, never shipped.
    assert!(
        keys.status.success(),
        "no host keys after boot:\n{}",
        ct.log()
    );
}

#[test]
fn rootfs_boots_as_privileged_lxc_system_container() {
    let file = rootfs_zst();
    let ct = Lxc::new("hakim-xrootfs");
    let rootfs = ct.dir().join("rootfs");
    extract(file, &rootfs, false);
    write_file(
        &ct.dir().join("config"),
        &lxc_system_config(&ct, &rootfs, false),
        0o600,
    );
    boot_and_check(&ct);
}

#[test]
fn rootfs_boots_as_unprivileged_lxc_system_container() {
    let file = rootfs_zst();
    let ct = Lxc::new("hakim-xrootfsu");
    fs::create_dir_all(ct.dir()).unwrap();
    for d in [ct.path.path(), &ct.dir()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o711)).unwrap();
    }
    let rootfs = ct.dir().join("rootfs");
    extract(file, &rootfs, true);
    assert_eq!(
        fs::metadata(rootfs.join("home/coder")).unwrap().uid(),
        IDMAP_BASE + 1000,
        "rootfs not shifted"
    );
    write_file(
        &ct.dir().join("config"),
        &lxc_system_config(&ct, &rootfs, true),
        0o644,
    );
    boot_and_check(&ct);
}

/// `lxc-create -t local` (whose LXC 5 template reads xz only) takes an xz rootfs and its meta
/// tarball. A small image keeps xz cheap; booting the real one is tested above.
#[test]
fn lxc_create_local_takes_the_rootfs_and_its_meta() {
    support::require_root();
    require_bin("xz", "xz-utils");
    let mut l1 = Layer::new();
    l1.dir("etc", 0o755, 0);
    l1.file("etc/os-release", 0o644, 0, "ID=debian\nVERSION_ID=\"13\"\n");
    l1.file("etc/shadow", 0o640, 0, "root:*:19000:0:99999:7:::\n");
    l1.dir("sbin", 0o755, 0);
    l1.file("sbin/init", 0o755, 0, "#!/bin/sh\n");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fixture_layout(&layout, vec![l1.finish()]);
    let out = tmp.path().join("small.tar.xz");
    let report = export_fixture(&layout, &out, hakim::export::Compression::Xz, true);
    let meta = report.meta.expect("meta written").path;
    assert_eq!(meta, tmp.path().join("small.meta.tar.xz"));
    let names = tar_list(&meta);
    assert!(names.contains(&"config".to_string()), "{names:?}");
    sha256sum_check(tmp.path(), "sha256sums.txt");
    let ct = Lxc::new("hakim-xlocal");
    let conf = ct.path.path().join("create.conf");
    write_file(&conf, "lxc.net.0.type = empty\n", 0o644);
    run_ok(
        ct.cmd("lxc-create", 300)
            .arg("-f")
            .arg(&conf)
            .args(["-t", "local", "--", "-m"])
            .arg(&meta)
            .arg("-f")
            .arg(&out),
    );
    let config = fs::read_to_string(ct.dir().join("config")).unwrap();
    assert!(
        config.contains("lxc.include = /usr/share/lxc/config/debian.common.conf"),
        "{config}"
    );
    assert_eq!(
        fs::read_to_string(ct.dir().join("rootfs/sbin/init")).unwrap(),
        "#!/bin/sh\n"
    );
}

/// Export the fixture image `fixture:latest` of `layout` as a rootfs with no template.
fn export_fixture(
    layout: &Path,
    out: &Path,
    compression: hakim::export::Compression,
    lxc_meta: bool,
) -> hakim::export::ExportReport {
    let img =
        hakim::oci::resolve_image(layout, "fixture", &["fixture:latest".into()], "amd64").unwrap();
    let project = hakim::spec::Project::load(&support::repo_root()).unwrap();
    let mut variant = project.variant("base").unwrap().clone();
    variant.rootfs.clear();
    hakim::export::export(&hakim::export::ExportRequest {
        format: hakim::export::Format::Rootfs,
        variant: &variant,
        arch: "amd64",
        layout,
        image: &img,
        dest: hakim::export::Dest::File(out.to_path_buf()),
        compression,
        lxc_meta,
        epoch: 1_700_000_000,
        scratch: None,
    })
    .unwrap()
}

#[test]
fn docker_archive_streams_to_stdout_and_podman_loads_it() {
    let dir = export_dir("docker");
    let streamed = dir.join("streamed.tar");
    let out = hakim_export(&["docker-archive", "base", "-o", "-"])
        .stdout(Stdio::from(fs::File::create(&streamed).unwrap()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(&mut hakim_export(&[
        "docker-archive",
        "base",
        "-o",
        dir.to_str().unwrap(),
    ]));
    let file = dir.join("hakim-base_latest.docker.tar");
    assert!(
        fs::read(&streamed).unwrap() == fs::read(&file).unwrap(),
        "stdout and file exports differ"
    );
    assert!(tar_list(&file).contains(&"manifest.json".to_string()));
    sha256sum_check(&dir, "sha256sums.txt");
    let podman = Podman::new();
    let loaded = run_ok(podman.cmd(600).arg("load").arg("-i").arg(&file));
    let text = String::from_utf8_lossy(&loaded.stdout);
    assert!(text.contains("hakim-base:latest"), "{text}");
    run_ok(
        podman
            .cmd(120)
            .args(["run", "--rm", "hakim-base:latest", "true"]),
    );
}

#[test]
fn bad_input_fails_clearly_and_keeps_existing_exports() {
    let e = run_err(&mut hakim_export(&["rootfs", "nosuch"]));
    assert!(e.contains("nosuch") && e.contains("base"), "{e}");
    let e = run_err(&mut hakim_export(&[
        "oci-archive",
        "base",
        "--arch",
        "arm64",
    ]));
    assert!(e.contains("arm64") && e.contains("amd64"), "{e}");
    let e = run_err(&mut hakim_export(&[
        "oci-archive",
        "base",
        "-o",
        "/nonexistent/x.tar",
    ]));
    assert!(e.contains("/nonexistent"), "{e}");
    let e = run_err(&mut hakim_export(&["rootfs", "base", "-o", "-"]));
    assert!(e.contains("stdout"), "{e}");
    // A full disk: a 2 MiB tmpfs holding an earlier export.
    let mnt = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(mnt.path()),
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(mnt.path());
    let old = mnt.path().join("hakim-base_latest.tar");
    fs::write(&old, "an earlier export").unwrap();
    fs::write(
        mnt.path().join("sha256sums.txt"),
        "00  hakim-base_latest.tar\n",
    )
    .unwrap();
    let e = run_err(&mut hakim_export(&[
        "oci-archive",
        "base",
        "-o",
        mnt.path().to_str().unwrap(),
    ]));
    assert!(e.contains("No space left on device"), "{e}");
    assert_eq!(fs::read_to_string(&old).unwrap(), "an earlier export");
    let left: Vec<_> = fs::read_dir(mnt.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 2, "temporary files left behind: {left:?}");
}

// ---- whiteouts: a hand-made image flattened by hakim and by umoci -------------------------

struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn add(&mut self, path: &str, kind: tar::EntryType, mode: u32, owner: u64, body: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_mtime(1_700_000_000);
        h.set_size(body.len() as u64);
        self.0.append_data(&mut h, path, body).unwrap();
    }
    fn dir(&mut self, path: &str, mode: u32, owner: u64) {
        self.add(path, tar::EntryType::Directory, mode, owner, b"");
    }
    fn file(&mut self, path: &str, mode: u32, owner: u64, body: &str) {
        self.add(path, tar::EntryType::Regular, mode, owner, body.as_bytes());
    }
    fn link(&mut self, path: &str, kind: tar::EntryType, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        self.0.append_link(&mut h, path, target).unwrap();
    }
    fn caps(&mut self, path: &str, body: &str) {
        let cap: &[u8] = &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        self.0
            .append_pax_extensions([("SCHILY.xattr.security.capability", cap)])
            .unwrap();
        self.file(path, 0o755, 0, body);
    }
    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Writes a one-image OCI layout (`fixture:latest`, amd64) with plain tar layers.
fn fixture_layout(dir: &Path, layers: Vec<Vec<u8>>) {
    use sha2::{Digest, Sha256};
    let put = |bytes: &[u8]| {
        let hex = hex::encode(Sha256::digest(bytes));
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in &layers {
        let (d, size) = put(l);
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size
        }));
    }
    let config = serde_json::json!({
        "created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []
    });
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": "fixture:latest"}
    }]});
    fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// One path: type, mode, uid, gid, contents or link target, capability xattr.
type Seen = (char, u32, u32, u32, Vec<u8>, Option<Vec<u8>>);

/// Every path of a tree with what [`Seen`] records.
fn snapshot(root: &Path) -> BTreeMap<String, Seen> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Seen>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (t, body) = if m.is_dir() {
                ('d', Vec::new())
            } else if m.file_type().is_symlink() {
                (
                    'l',
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else {
                ('f', fs::read(&p).unwrap())
            };
            let cap = xattr::get(&p, "security.capability").unwrap_or(None);
            out.insert(rel, (t, m.mode() & 0o7777, m.uid(), m.gid(), body, cap));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn whiteouts_flatten_exactly_as_umoci_unpacks() {
    use tar::EntryType as T;
    support::require_root();
    require_bin("umoci", "umoci");
    let mut l1 = Layer::new();
    l1.dir("etc", 0o755, 0);
    l1.file(
        "etc/shadow",
        0o640,
        0,
        "root:$6$known$hash:19000:0:99999:7:::\n",
    );
    l1.file("gone", 0o644, 0, "deleted above");
    l1.dir("replaced", 0o755, 0);
    l1.file("replaced/inner", 0o644, 0, "replaced with a file above");
    l1.dir("opaque", 0o750, 1000);
    l1.file("opaque/old", 0o644, 1000, "hidden by the opaque marker");
    l1.dir("opaque/sub", 0o755, 0);
    l1.file("opaque/sub/deep", 0o600, 0, "also hidden");
    l1.dir("keep", 0o2775, 1000);
    l1.file("keep/a", 0o4755, 0, "setuid stays");
    l1.link("keep/b", T::Link, "keep/a");
    l1.link("keep/sym", T::Symlink, "../gone");
    l1.caps("keep/ping", "has a capability");
    let mut l2 = Layer::new();
    l2.file(".wh.gone", 0o644, 0, "");
    l2.file(".wh.replaced", 0o644, 0, "");
    l2.file("replaced", 0o600, 1000, "now a file");
    l2.dir("opaque", 0o700, 1000);
    l2.file("opaque/.wh..wh..opq", 0o644, 0, "");
    l2.file("opaque/new", 0o644, 1000, "the only child");
    l2.dir("keep", 0o2775, 1000);
    l2.file("keep/c", 0o644, 0, "added");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fixture_layout(&layout, vec![l1.finish(), l2.finish()]);

    let out = tmp.path().join("fixture.tar.gz");
    export_fixture(&layout, &out, hakim::export::Compression::Gzip, false);
    let names = tar_list(&out);
    assert!(!names.iter().any(|n| n.contains(".wh.")), "{names:?}");
    let ours = tmp.path().join("ours");
    extract(&out, &ours, false);
    let bundle = tmp.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:fixture:latest", layout.display()))
            .arg(&bundle),
    );
    let mut theirs = snapshot(&bundle.join("rootfs"));
    let mut mine = snapshot(&ours);
    // The one intended difference: a known root password is locked.
    let shadow = mine.remove("etc/shadow").unwrap();
    theirs.remove("etc/shadow").unwrap();
    assert!(String::from_utf8_lossy(&shadow.4).starts_with("root:*:19000:"));
    assert_eq!(mine, theirs);
    assert!(mine.contains_key("replaced") && !mine.contains_key("opaque/old"));
    let a = fs::metadata(ours.join("keep/a")).unwrap();
    let b = fs::metadata(ours.join("keep/b")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlink lost");
    assert!(mine["keep/ping"].5.is_some(), "file capability lost");
}

#[test]
fn a_corrupt_layer_blob_fails_the_export_and_writes_nothing() {
    let mut l1 = Layer::new();
    l1.dir("etc", 0o755, 0);
    l1.file("etc/os-release", 0o644, 0, "ID=debian\n");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fixture_layout(&layout, vec![l1.finish()]);
    let img =
        hakim::oci::resolve_image(&layout, "fixture", &["fixture:latest".into()], "amd64").unwrap();
    // Same size, one byte flipped: only a digest check can tell.
    let blob = &img.layers[0].blob;
    let mut bytes = fs::read(blob).unwrap();
    bytes[100] ^= 0xff;
    fs::write(blob, &bytes).unwrap();
    let project = hakim::spec::Project::load(&support::repo_root()).unwrap();
    let variant = project.variant("base").unwrap();
    for format in [
        hakim::export::Format::OciArchive,
        hakim::export::Format::Rootfs,
        hakim::export::Format::DockerArchive,
    ] {
        let out = tmp.path().join("out.tar");
        let err = hakim::export::export(&hakim::export::ExportRequest {
            format,
            variant,
            arch: "amd64",
            layout: &layout,
            image: &img,
            dest: hakim::export::Dest::File(out.clone()),
            compression: hakim::export::Compression::Gzip,
            lxc_meta: false,
            epoch: 1_700_000_000,
            scratch: None,
        })
        .expect_err("a corrupt blob must not be exported");
        let msg = err.to_string();
        assert!(msg.contains("hakim build"), "{format:?}: {msg}");
        assert!(!out.exists(), "{format:?} wrote {}", out.display());
        assert!(!tmp.path().join("sha256sums.txt").exists(), "{format:?}");
    }
}
