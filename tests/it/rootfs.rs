//! Root filesystems from layers: unpacking (against umoci), overlays, upper-dir diffs and the
//! bubblewrap sandbox. Needs root, umoci, bwrap and busybox-static (fails loudly otherwise).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::support::{Scratch, require_bin, require_root, run_ok, umoci_unpack};
use hakim::cache::Cas;
use hakim::layer::diff::upper_to_entries;
use hakim::layer::entry::{Content, Entry, Kind};
use hakim::layer::tarball::{LayerBlob, write_layer};
use hakim::layer::walk::{Ownership, walk};
use hakim::oci::model::{Descriptor, REF_NAME};
use hakim::oci::{ImageLayer, Layout, resolve_image, write_manifest};
use hakim::rootfs::{Backend, Bind, Overlay, RootfsCache, RootfsError, Sandbox, unpack_layer};
use hakim::spec::{Compression, ImageConfigSpec};

/// A comparable description of a tree: path → (type/content, mode, uid, gid, mtime, xattrs, and
/// for a file with several names, the first of them: hardlinks must stay hardlinks).
fn describe(root: &Path) -> BTreeMap<String, String> {
    let entries = walk(root, "", Ownership::Keep).unwrap();
    let mut first_name: BTreeMap<u64, String> = BTreeMap::new();
    let mut links = BTreeMap::new();
    for e in &entries {
        let m = fs::symlink_metadata(root.join(&e.path)).unwrap();
        if m.is_file() && m.nlink() > 1 {
            let first = first_name.entry(m.ino()).or_insert_with(|| e.path.clone());
            links.insert(e.path.clone(), first.clone());
        }
    }
    entries
        .into_iter()
        .map(|e| {
            let what = match &e.kind {
                Kind::File(Content::Disk(p)) => format!(
                    "file {}",
                    hakim::digest::Sha256Digest::of(&fs::read(p).unwrap()).hex()
                ),
                Kind::Hardlink(t) => {
                    // Which name of an inode is "first" is a walk detail; compare contents.
                    format!(
                        "file {}",
                        hakim::digest::Sha256Digest::of(&fs::read(root.join(t)).unwrap()).hex()
                    )
                }
                other => format!("{other:?}"),
            };
            let mtime = if matches!(e.kind, Kind::Dir) {
                String::new()
            } else {
                e.mtime.to_string()
            };
            (
                e.path.clone(),
                format!(
                    "{what} mode={:o} owner={}:{} mtime={mtime} xattrs={:?} links={:?}",
                    e.mode,
                    e.uid,
                    e.gid,
                    e.xattrs,
                    links.get(&e.path)
                ),
            )
        })
        .collect()
}

fn build(s: &Scratch, variant: &str) {
    run_ok(s.hakim().arg("build").arg(variant));
}

fn mounted(lowers: &[PathBuf], base: &Path) -> (Overlay, PathBuf, PathBuf) {
    let (upper, work, target) = (base.join("upper"), base.join("work"), base.join("merged"));
    for d in [&upper, &work, &target] {
        fs::create_dir_all(d).unwrap();
    }
    (
        Overlay::mount(lowers, &upper, &work, &target).unwrap(),
        upper,
        target,
    )
}

#[test]
fn unpacked_layers_under_an_overlay_match_umoci() {
    require_root();
    let s = Scratch::fixture("basic");
    let bin = s.project().join("layers/files/rootfs/usr/local/bin");
    fs::hard_link(bin.join("hello"), bin.join("hello-again")).unwrap();
    build(&s, "base");
    let img = resolve_image(&s.layout(), "base", &["test-base:latest".into()], "amd64").unwrap();
    assert_eq!(img.layers.len(), 2);
    let work = tempfile::tempdir().unwrap();
    let mut lowers = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        let dest = work.path().join(format!("layer{i}"));
        unpack_layer(&l.blob, &l.media_type, &dest).unwrap();
        // Nothing is left beside the destination but the destination itself.
        lowers.push(dest);
    }
    let names: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "temp dirs left behind: {names:?}");
    let (ov, _upper, merged) = mounted(&lowers, &work.path().join("ov"));
    let ours = describe(&merged);
    drop(ov);
    let theirs = describe(&umoci_unpack(
        &s.layout(),
        "test-base:latest",
        &work.path().join("umoci"),
    ));
    assert_eq!(ours, theirs);
    // Spot checks that the comparison saw what matters.
    assert!(
        ours["etc/app/app.conf"].contains("mode=600"),
        "{}",
        ours["etc/app/app.conf"]
    );
    assert!(
        ours["home/coder/work"].contains("owner=1000:1000"),
        "{}",
        ours["home/coder/work"]
    );
    assert!(ours["tmp"].contains("mode=1777"), "{}", ours["tmp"]);
    assert!(
        ours["usr/local/bin/hello-again"].contains("links=Some(\"usr/local/bin/hello\")"),
        "{}",
        ours["usr/local/bin/hello-again"]
    );
    assert!(
        ours["usr/bin/hi"].starts_with("Symlink(\"../local/bin/hello\")"),
        "{}",
        ours["usr/bin/hi"]
    );
}

#[test]
fn zstd_layers_unpack_like_their_gzip_twins_and_the_cache_reuses_them() {
    require_root();
    let s = Scratch::fixture("basic");
    build(&s, "base");
    build(&s, "app");
    let gz = resolve_image(&s.layout(), "base", &["test-base:latest".into()], "amd64").unwrap();
    let zs = resolve_image(&s.layout(), "app", &["test-app:latest".into()], "amd64").unwrap();
    assert!(
        zs.layers[0].media_type.ends_with("+zstd") && gz.layers[0].media_type.ends_with("+gzip")
    );
    assert_eq!(zs.layers[0].diff_id, gz.layers[0].diff_id);
    let work = tempfile::tempdir().unwrap();
    unpack_layer(
        &gz.layers[0].blob,
        &gz.layers[0].media_type,
        &work.path().join("gz"),
    )
    .unwrap();
    let cache = RootfsCache::new(&work.path().join("cache"));
    let l = &zs.layers[0];
    let p = cache.ensure(&l.blob, &l.media_type, &l.diff_id).unwrap();
    assert_eq!(p, work.path().join("cache/rootfs").join(l.diff_id.hex()));
    assert_eq!(describe(&p), describe(&work.path().join("gz")));
    // A second ensure reuses the extracted tree instead of unpacking again.
    fs::write(p.join("marker"), "x").unwrap();
    assert_eq!(cache.ensure(&l.blob, &l.media_type, &l.diff_id).unwrap(), p);
    assert!(p.join("marker").exists());
    // A blob whose content is not the diff_id it claims is refused, and nothing is cached.
    let other = &zs.layers[1];
    let wrong = hakim::digest::Sha256Digest::of(b"not this layer");
    let e = cache
        .ensure(&other.blob, &other.media_type, &wrong)
        .unwrap_err();
    assert!(matches!(e, RootfsError::DiffId { .. }), "{e}");
    assert!(!cache.path(&wrong).exists());
}

fn cas(dir: &Path) -> Cas {
    Cas::open(dir.join("blobs")).unwrap()
}

fn file(path: &str, body: &str, mode: u32) -> Entry {
    Entry::new(
        path,
        Kind::File(Content::Bytes(body.as_bytes().to_vec())),
        mode,
    )
}

#[test]
fn every_entry_type_and_its_metadata_is_unpacked() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let mut entries = vec![
        Entry::new("bin", Kind::Dir, 0o755),
        {
            let mut e = file("bin/ping", "ELF", 0o4755);
            e.xattrs.insert(
                "security.capability".into(),
                vec![
                    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            );
            e
        },
        Entry::new("bin/ping2", Kind::Hardlink("bin/ping".into()), 0o4755),
        Entry::new("bin/sh", Kind::Symlink("busybox".into()), 0o777),
        Entry::new("dev", Kind::Dir, 0o755),
        Entry::new("dev/null", Kind::Char(1, 3), 0o666),
        Entry::new("dev/loop9", Kind::Block(7, 9), 0o660),
        Entry::new("dev/pipe", Kind::Fifo, 0o600),
        {
            let mut e = Entry::new("home/coder", Kind::Dir, 0o2750);
            e.uid = 1000;
            e.gid = 1000;
            e.mtime = 1_700_000_000;
            e
        },
        {
            let mut e = file("home/coder/.profile", "x=1\n", 0o640);
            e.uid = 1000;
            e.gid = 1000;
            e.mtime = 1_600_000_000;
            e
        },
        Entry::new("tmp", Kind::Dir, 0o1777),
        Entry::new("gone", Kind::Whiteout, 0),
        Entry::new("tmp", Kind::Opaque, 0),
    ];
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let blob = write_layer(
        entries.iter(),
        2_000_000_000,
        Compression::Gzip,
        &cas(work.path()),
    )
    .unwrap();
    let dest = work.path().join("out");
    unpack_layer(
        &cas(work.path()).path(&blob.digest),
        &blob.media_type,
        &dest,
    )
    .unwrap();
    let m = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap();
    assert_eq!(m("bin/ping").mode() & 0o7777, 0o4755);
    assert_eq!(
        xattr::get(dest.join("bin/ping"), "security.capability")
            .unwrap()
            .unwrap()[5],
        0x20
    );
    assert_eq!(m("bin/ping").ino(), m("bin/ping2").ino());
    assert_eq!(
        fs::read_link(dest.join("bin/sh")).unwrap(),
        PathBuf::from("busybox")
    );
    assert!(
        m("dev/null").file_type().is_char_device() && m("dev/null").rdev() == libc::makedev(1, 3)
    );
    assert!(
        m("dev/loop9").file_type().is_block_device()
            && m("dev/loop9").rdev() == libc::makedev(7, 9)
    );
    assert!(m("dev/pipe").file_type().is_fifo());
    assert_eq!(
        (
            m("home/coder").mode() & 0o7777,
            m("home/coder").uid(),
            m("home/coder").gid()
        ),
        (0o2750, 1000, 1000)
    );
    assert_eq!(m("home/coder").mtime(), 1_700_000_000);
    assert_eq!(
        (
            m("home/coder/.profile").mode() & 0o7777,
            m("home/coder/.profile").mtime()
        ),
        (0o640, 1_600_000_000)
    );
    assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
    // Whiteouts in overlayfs form.
    assert!(m("gone").file_type().is_char_device() && m("gone").rdev() == 0);
    assert_eq!(
        xattr::get(dest.join("tmp"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dest.join("tmp/.wh..wh..opq").exists() && !dest.join(".wh.gone").exists());
    // An existing destination is not overwritten.
    assert!(
        unpack_layer(
            &cas(work.path()).path(&blob.digest),
            &blob.media_type,
            &dest
        )
        .is_err()
    );
    // Unknown media types are refused by name.
    let e = unpack_layer(
        &cas(work.path()).path(&blob.digest),
        "application/x-foo",
        &work.path().join("x"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("application/x-foo"), "{e}");
}

/// A raw tar entry, written without the tar crate's path checks.
fn raw_entry(name: &str, kind: tar::EntryType, link: &str, body: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(body.len() as u64);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

#[test]
fn unsafe_entries_are_refused_and_nothing_escapes() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "absolute",
            raw_entry("/etc/evil", tar::EntryType::Regular, "", b"x"),
        ),
        (
            "dotdot",
            raw_entry("a/../../evil", tar::EntryType::Regular, "", b"x"),
        ),
        (
            "symlinked parent",
            [
                raw_entry(
                    "link",
                    tar::EntryType::Symlink,
                    outside.to_str().unwrap(),
                    b"",
                ),
                raw_entry("link/evil", tar::EntryType::Regular, "", b"x"),
            ]
            .concat(),
        ),
        (
            "relative symlinked parent",
            [
                raw_entry("up", tar::EntryType::Symlink, "..", b""),
                raw_entry("up/evil", tar::EntryType::Regular, "", b"x"),
            ]
            .concat(),
        ),
        (
            "hardlink out",
            raw_entry("h", tar::EntryType::Link, "../outside/target", b""),
        ),
    ];
    fs::write(outside.join("target"), "t").unwrap();
    for (i, (what, mut bytes)) in cases.into_iter().enumerate() {
        bytes.extend_from_slice(&[0u8; 1024]);
        let blob = work.path().join(format!("blob{i}"));
        fs::write(&blob, &bytes).unwrap();
        let dest = work.path().join(format!("dest{i}"));
        let e =
            unpack_layer(&blob, "application/vnd.oci.image.layer.v1.tar", &dest).expect_err(what);
        assert!(matches!(e, RootfsError::BadEntry { .. }), "{what}: {e}");
        assert!(!dest.exists(), "{what}: destination created");
    }
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        1,
        "something was written outside"
    );
    assert!(!work.path().join("evil").exists());
    // No temp dirs are left behind after failures.
    let leftovers: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn put_layer(layout: &Layout, c: &Cas, blob: &LayerBlob, name: &str) -> ImageLayer {
    layout
        .put_blob_file(&c.path(&blob.digest), &blob.digest)
        .unwrap();
    ImageLayer {
        blob: blob.clone(),
        name: name.into(),
        comment: None,
    }
}

#[test]
fn upper_dir_diffs_become_whiteouts_and_opaque_dirs_that_umoci_applies() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let c = cas(work.path());
    let mut lower_entries = [
        Entry::new("a", Kind::Dir, 0o755),
        file("a/x", "x", 0o644),
        file("b", "b", 0o644),
        Entry::new("c", Kind::Dir, 0o755),
        file("c/d", "d", 0o644),
        Entry::new("c/sub", Kind::Dir, 0o700),
        file("c/sub/e", "e", 0o600),
        file("keep", "k", 0o644),
    ];
    lower_entries.sort_by(|a, b| a.path.cmp(&b.path));
    let l1 = write_layer(lower_entries.iter(), 0, Compression::Gzip, &c).unwrap();
    let lower = work.path().join("lower");
    unpack_layer(&c.path(&l1.digest), &l1.media_type, &lower).unwrap();
    let before = describe(&lower);

    let (ov, upper, merged) = mounted(std::slice::from_ref(&lower), &work.path().join("ov"));
    fs::remove_file(merged.join("b")).unwrap();
    fs::remove_dir_all(merged.join("c")).unwrap();
    fs::create_dir(merged.join("c")).unwrap();
    fs::write(merged.join("c/new"), "new").unwrap();
    fs::write(merged.join("a/y"), "y").unwrap();
    ov.unmount().unwrap();
    assert_eq!(describe(&lower), before, "the lower dir changed");

    let entries = upper_to_entries(&upper).unwrap();
    let shape: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            let k = match &e.kind {
                Kind::File(_) => "file",
                Kind::Dir => "dir",
                Kind::Whiteout => "whiteout",
                Kind::Opaque => "opaque",
                _ => "other",
            };
            (e.path.clone(), k.to_string())
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("a", "dir"),
        ("a/y", "file"),
        ("b", "whiteout"),
        ("c", "dir"),
        ("c", "opaque"),
        ("c/new", "file"),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), k.to_string()))
    .collect();
    assert_eq!(shape, want);

    let l2 = write_layer(entries.iter(), 0, Compression::Gzip, &c).unwrap();
    let layout = Layout::open_or_create(&work.path().join("oci")).unwrap();
    let layers = vec![
        put_layer(&layout, &c, &l1, "lower"),
        put_layer(&layout, &c, &l2, "diff"),
    ];
    let written = write_manifest(
        &layout,
        "amd64",
        &layers,
        &ImageConfigSpec::default(),
        &BTreeMap::new(),
        &BTreeMap::new(),
        0,
    )
    .unwrap();
    let mut d: Descriptor = written.descriptor;
    d.set_platform(None);
    d.set_annotations(Some([(REF_NAME.into(), "diff:latest".into())].into()));
    layout.set_refs(vec![d]).unwrap();
    let rootfs = umoci_unpack(layout.dir(), "diff:latest", &work.path().join("bundle"));
    let mut seen: Vec<String> = walk(&rootfs, "", Ownership::Keep)
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    seen.sort();
    assert_eq!(seen, vec!["a", "a/x", "a/y", "c", "c/new", "keep"]);
    assert_eq!(fs::read_to_string(rootfs.join("c/new")).unwrap(), "new");
}

#[test]
fn an_overlay_with_no_lower_dirs_writes_to_its_upper() {
    require_root();
    let work = tempfile::tempdir().unwrap();
    let (ov, upper, merged) = mounted(&[], work.path());
    fs::write(merged.join("f"), "1").unwrap();
    drop(ov);
    assert_eq!(fs::read_to_string(upper.join("f")).unwrap(), "1");
    assert!(!merged.join("f").exists(), "still mounted after drop");
}

/// A lower dir holding a static busybox with the applets the sandbox tests use.
fn busybox_lower(dir: &Path) -> PathBuf {
    let bb = Path::new("/bin/busybox");
    assert!(
        bb.is_file(),
        "missing test prerequisite /bin/busybox: install it with `apt-get install busybox-static` (scripts/test does this)"
    );
    let root = dir.join("bb");
    for d in ["bin", "etc", "home/coder", "proc", "dev", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(bb, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "env", "id", "stat", "touch", "grep", "ls", "rm", "echo",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ncoder:x:1000:1000::/home/coder:/bin/sh\n",
    )
    .unwrap();
    std::os::unix::fs::chown(root.join("home/coder"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    root
}

fn sh(sb: &Sandbox, script: &str) -> String {
    let out = run_ok(
        &mut sb
            .command(&["/bin/sh".into(), "-c".into(), script.into()])
            .unwrap(),
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_sandbox_isolates_network_env_and_user_and_writes_only_to_the_upper() {
    require_root();
    require_bin("bwrap", "bubblewrap");
    Backend::Bwrap.require().unwrap();
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let lower = busybox_lower(work.path());
    let before = describe(&lower);
    let (ov, upper, merged) = mounted(std::slice::from_ref(&lower), &work.path().join("ov"));
    let mut sb = Sandbox::new(&merged);
    sb.env.insert("PATH".into(), "/bin".into());
    sb.env.insert("FOO".into(), "bar".into());

    // Network: only loopback unless asked for.
    let ifaces = |s: &str| {
        s.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|i| i.trim().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ifaces(&sh(&sb, "cat /proc/net/dev")), vec!["lo"]);
    let host_ifaces = ifaces(&fs::read_to_string("/proc/net/dev").unwrap());
    assert!(
        host_ifaces.len() > 1,
        "the host needs a non-loopback interface for this check: {host_ifaces:?}"
    );
    sb.network = true;
    assert_eq!(
        ifaces(&sh(&sb, "cat /proc/net/dev")).len(),
        host_ifaces.len()
    );
    sb.network = false;

    // Environment: exactly what was set (plus what sh itself adds), nothing from the host.
    let env = sh(&sb, "env");
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for n in &names {
        assert!(
            ["PATH", "FOO", "PWD", "SHLVL", "_"].contains(n),
            "unexpected variable {n} in:\n{env}"
        );
    }
    assert!(env.contains("FOO=bar\n"));
    assert!(
        std::env::vars().count() > 3,
        "the host env should have something to leak"
    );

    // User: real uid/gid 1000 with no capabilities; root-owned files keep their owner.
    sb.user = Some((1000, 1000));
    sb.cwd = Some("/home/coder".into());
    let out = sh(
        &sb,
        "id -u; id -g; pwd; stat -c %u /bin/busybox; grep CapEff /proc/self/status; touch /etc/x 2>/dev/null && echo wrote-etc; touch mine; stat -c %u mine",
    );
    assert_eq!(
        out, "1000\n1000\n/home/coder\n0\nCapEff:\t0000000000000000\n1000\n",
        "{out}"
    );
    assert_eq!(
        fs::metadata(upper.join("home/coder/mine")).unwrap().uid(),
        1000
    );
    // The first process is dumpable like any other: its /proc/self/fd is its own.
    let out = run_ok(
        &mut sb
            .command(&[
                "/bin/stat".into(),
                "-c".into(),
                "%u".into(),
                "/proc/self/fd".into(),
            ])
            .unwrap(),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000\n");
    sb.user = None;
    sb.cwd = None;

    // Writes as root land in the upper dir; the lower dir is untouched.
    sh(&sb, "echo hi > /newfile && rm /bin/cat && id -u > /tmp/id");
    assert_eq!(fs::read_to_string(upper.join("newfile")).unwrap(), "hi\n");
    assert!(
        fs::symlink_metadata(upper.join("bin/cat"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(
        fs::read_to_string(upper.join("tmp/id")).unwrap(),
        "0\n",
        "no tmpfs on /tmp unless asked"
    );

    // tmpfs /tmp keeps writes there out of the upper; binds are visible.
    let host_dir = work.path().join("shared");
    fs::create_dir(&host_dir).unwrap();
    fs::write(host_dir.join("in"), "from host").unwrap();
    sb.tmpfs_tmp = true;
    sb.binds.push(Bind {
        src: host_dir.clone(),
        dest: "/mnt".into(),
        readonly: true,
    });
    assert_eq!(
        sh(
            &sb,
            "echo t > /tmp/t2; cat /mnt/in; touch /mnt/w 2>/dev/null || echo ro"
        ),
        "from hostro\n"
    );
    assert!(!upper.join("tmp/t2").exists());
    drop(ov);
    assert_eq!(describe(&lower), before, "the lower dir changed");
}
