//! Package, locale and run layers: the image's own dpkg and scripts, run in a sandbox over an
//! overlay of the lower layers, so maintainer scripts really run and the upper dir is the diff.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::diff::upper_to_entries;
use super::entry::{Content, Entry, Kind, LayerTree};
use super::store::DirView;
use super::{LayerError, PureInputs, assemble_pure};
use crate::debian::control;
use crate::debian::lock::LockedLayer;
use crate::debian::relation::parse_dependencies;
use crate::rootfs::{Backend, Overlay, RootfsError, Sandbox};
use crate::spec::Layer;

/// Errors while building a package or run layer.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Filesystem failure.
    #[error("layer `{layer}`: {path}: {source}")]
    Io {
        layer: String,
        path: PathBuf,
        source: io::Error,
    },
    /// Mounting or sandboxing failed.
    #[error("layer `{layer}`: {source}")]
    Rootfs { layer: String, source: RootfsError },
    /// A command in the sandbox failed.
    #[error("layer `{layer}`: {what} failed ({status}):\n{tail}")]
    Step {
        layer: String,
        what: String,
        status: String,
        tail: String,
    },
    /// The pure parts of the layer failed.
    #[error(transparent)]
    Layer(#[from] Box<LayerError>),
}

/// Everything needed to build one rootfs layer.
pub struct RootfsLayer<'a> {
    /// The layer.
    pub layer: &'a Layer,
    /// Debian architecture.
    pub arch: &'a str,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// Unpacked lower layers, bottom first.
    pub lowers: Vec<PathBuf>,
    /// The layer's locked packages, if it installs any.
    pub packages: Option<&'a LockedLayer>,
    /// Their .deb files, in the same order.
    pub debs: &'a [PathBuf],
    /// Fetched archives, in `archives:` order.
    pub archives: &'a [PathBuf],
    /// apt sources to write after bootstrapping (`/etc/apt/sources.list.d/debian.sources`).
    pub apt_sources: Option<&'a str>,
    /// A directory on the cache's filesystem for scratch space.
    pub scratch: &'a Path,
}

/// A built rootfs layer: its entries (reading from `upper`) and the upper dir itself.
pub struct BuiltRootfs {
    /// Layer entries, ready for the tar writer.
    pub entries: Vec<Entry>,
    /// The overlay upper dir (the layer in unpacked form).
    pub upper: PathBuf,
    _tmp: tempfile::TempDir,
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEBS_IN_SANDBOX: &str = "/var/cache/hakim-debs";

struct Ctx<'a> {
    name: &'a str,
    root: PathBuf,
    epoch: u64,
}

impl Ctx<'_> {
    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
        let path = path.to_path_buf();
        move |source| InstallError::Io {
            layer: self.name.to_string(),
            path,
            source,
        }
    }

    fn sandbox(&self, network: bool, binds: Vec<crate::rootfs::Bind>) -> Sandbox {
        let mut s = Sandbox::new(&self.root);
        s.network = network;
        s.tmpfs_tmp = true;
        s.binds = binds;
        s.cwd = Some("/".into());
        for (k, v) in [
            ("PATH", PATH.to_string()),
            ("HOME", "/root".to_string()),
            ("LC_ALL", "C.UTF-8".to_string()),
            ("DEBIAN_FRONTEND", "noninteractive".to_string()),
            ("DEBCONF_NONINTERACTIVE_SEEN", "true".to_string()),
            ("SOURCE_DATE_EPOCH", self.epoch.to_string()),
        ] {
            s.env.insert(k.into(), v);
        }
        s
    }

    /// Run a command in the sandbox; on failure keep the tail of its output for the error.
    fn run(&self, what: &str, sandbox: &Sandbox, argv: &[String]) -> Result<(), InstallError> {
        let rootfs_err = |source| InstallError::Rootfs {
            layer: self.name.into(),
            source,
        };
        let out = sandbox
            .command(argv)
            .map_err(rootfs_err)?
            .stdin(Stdio::null())
            .output()
            .map_err(|source| InstallError::Rootfs {
                layer: self.name.into(),
                source: RootfsError::Spawn {
                    what: "bwrap".into(),
                    source,
                },
            })?;
        if out.status.success() {
            return Ok(());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        Err(InstallError::Step {
            layer: self.name.into(),
            what: what.into(),
            status: out.status.to_string(),
            tail,
        })
    }
}

/// Build a layer that needs a real root filesystem.
pub fn build(inp: &RootfsLayer<'_>) -> Result<BuiltRootfs, InstallError> {
    let name = inp.layer.name.as_str();
    let rootfs_err = |source| InstallError::Rootfs {
        layer: name.into(),
        source,
    };
    Backend::Bwrap.require().map_err(rootfs_err)?;
    fs::create_dir_all(inp.scratch).map_err(|source| InstallError::Io {
        layer: name.into(),
        path: inp.scratch.into(),
        source,
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(&crate::janitor::layer_dir_prefix())
        .tempdir_in(inp.scratch)
        .map_err(|source| InstallError::Io {
            layer: name.into(),
            path: inp.scratch.into(),
            source,
        })?;
    let (upper, work, merged, debs_dir) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
        tmp.path().join("debs"),
    );
    for d in [&upper, &work, &merged, &debs_dir] {
        fs::create_dir_all(d).map_err(|source| InstallError::Io {
            layer: name.into(),
            path: d.clone(),
            source,
        })?;
    }
    crate::rootfs::overlay::match_root(&upper, &inp.lowers).map_err(rootfs_err)?;
    let overlay = Overlay::mount(&inp.lowers, &upper, &work, &merged).map_err(rootfs_err)?;
    let ctx = Ctx {
        name,
        root: merged.clone(),
        epoch: inp.epoch,
    };
    let result = (|| {
        prepare(&ctx)?;
        if let Some(locked) = inp.packages {
            install_packages(&ctx, inp, locked, &debs_dir)?;
        }
        if let Some(sources) = inp.apt_sources {
            write_file(
                &ctx,
                "etc/apt/sources.list.d/debian.sources",
                sources,
                0o644,
            )?;
        }
        if !inp.layer.spec.locales.is_empty() {
            generate_locales(&ctx, &inp.layer.spec.locales)?;
        }
        let view = DirView {
            root: merged.clone(),
        };
        let tree = assemble_pure(
            inp.layer,
            &PureInputs {
                arch: inp.arch,
                epoch: inp.epoch,
                archives: inp.archives,
                lower: &view,
            },
        )
        .map_err(|e| InstallError::Layer(Box::new(e)))?;
        materialize(&ctx, &tree)?;
        for (i, step) in inp.layer.spec.run.iter().enumerate() {
            let what = step
                .value
                .name
                .clone()
                .unwrap_or_else(|| format!("run step {}", i + 1));
            let sb = ctx.sandbox(step.value.network, Vec::new());
            ctx.run(
                &what,
                &sb,
                &["/bin/sh".into(), "-ec".into(), step.value.script.clone()],
            )?;
        }
        clean(&ctx)
    })();
    overlay.unmount().map_err(rootfs_err)?;
    result?;
    let entries = upper_to_entries(&upper).map_err(rootfs_err)?;
    Ok(BuiltRootfs {
        entries,
        upper,
        _tmp: tmp,
    })
}

fn write_file(ctx: &Ctx<'_>, rel: &str, text: &str, mode: u32) -> Result<(), InstallError> {
    let p = ctx.root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(ctx.io(parent))?;
    }
    fs::write(&p, text).map_err(ctx.io(&p))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(ctx.io(&p))
}

/// Block service starts and make dpkg skip fsync while the layer is built.
fn prepare(ctx: &Ctx<'_>) -> Result<(), InstallError> {
    write_file(ctx, "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)?;
    write_file(
        ctx,
        "etc/dpkg/dpkg.cfg.d/hakim-unsafe-io",
        "force-unsafe-io\n",
        0o644,
    )
}

fn deb_name(p: &crate::debian::lock::LockedPackage) -> String {
    format!(
        "{}_{}_{}.deb",
        p.name,
        p.version.replace(':', "%3a"),
        p.architecture
    )
}

fn install_packages(
    ctx: &Ctx<'_>,
    inp: &RootfsLayer<'_>,
    locked: &LockedLayer,
    debs_dir: &Path,
) -> Result<(), InstallError> {
    for (p, src) in locked.packages.iter().zip(inp.debs) {
        let dest = debs_dir.join(deb_name(p));
        if fs::hard_link(src, &dest).is_err() {
            fs::copy(src, &dest).map_err(ctx.io(&dest))?;
        }
    }
    let bind = vec![crate::rootfs::Bind {
        src: debs_dir.to_path_buf(),
        dest: DEBS_IN_SANDBOX.into(),
        readonly: true,
    }];
    let in_sandbox =
        |p: &crate::debian::lock::LockedPackage| format!("{DEBS_IN_SANDBOX}/{}", deb_name(p));
    let mut rest: Vec<&crate::debian::lock::LockedPackage> = locked.packages.iter().collect();
    if locked.bootstrap {
        bootstrap_tree(ctx, inp.arch)?;
        let essential: Vec<_> = locked.packages.iter().filter(|p| p.essential).collect();
        for p in &essential {
            extract(ctx, &debs_dir.join(deb_name(p)))?;
        }
        // As mmdebstrap: dpkg ignores Pre-Depends ordering across one call, hence --force-depends.
        let mut argv: Vec<String> =
            vec!["dpkg".into(), "--install".into(), "--force-depends".into()];
        argv.extend(essential.iter().map(|p| in_sandbox(p)));
        ctx.run(
            "dpkg --install (Essential set)",
            &ctx.sandbox(false, bind.clone()),
            &argv,
        )?;
        rest.retain(|p| !p.essential);
    }
    let fields = read_fields(ctx, debs_dir, &rest, inp.arch)?;
    let batches = order_batches(&rest, &fields, &installed_names(ctx));
    for batch in batches {
        let mut argv: Vec<String> = vec!["dpkg".into(), "--install".into()];
        argv.extend(batch.iter().map(|p| in_sandbox(p)));
        ctx.run("dpkg --install", &ctx.sandbox(false, bind.clone()), &argv)?;
    }
    // A half-configured package must not be sealed into a layer.
    let out = ctx
        .sandbox(false, Vec::new())
        .command(&["dpkg".into(), "--audit".into()])
        .map_err(|source| InstallError::Rootfs {
            layer: ctx.name.into(),
            source,
        })?
        .output()
        .map_err(|source| InstallError::Rootfs {
            layer: ctx.name.into(),
            source: RootfsError::Spawn {
                what: "bwrap".into(),
                source,
            },
        })?;
    if !out.stdout.is_empty() || !out.status.success() {
        return Err(InstallError::Step {
            layer: ctx.name.into(),
            what: "dpkg --audit".into(),
            status: out.status.to_string(),
            tail: String::from_utf8_lossy(&out.stdout).into_owned(),
        });
    }
    Ok(())
}

/// Relationship fields of one .deb, as alternatives of names.
struct Fields {
    pre_depends: Vec<Vec<String>>,
    depends: Vec<Vec<String>>,
    provides: Vec<String>,
}

/// Split packages into dpkg runs: a package runs no earlier than what it depends on, and
/// strictly after what it pre-depends on (dpkg needs those configured before unpacking).
fn order_batches<'p>(
    pkgs: &[&'p crate::debian::lock::LockedPackage],
    fields: &BTreeMap<String, Fields>,
    installed: &BTreeSet<String>,
) -> Vec<Vec<&'p crate::debian::lock::LockedPackage>> {
    let mut provider: BTreeMap<&str, &str> = BTreeMap::new();
    for p in pkgs {
        for prov in &fields[&p.name].provides {
            provider.entry(prov.as_str()).or_insert(p.name.as_str());
        }
        provider.insert(p.name.as_str(), p.name.as_str());
    }
    // The in-set package an alternative group needs, unless something installed satisfies it.
    let target = |alts: &Vec<String>| -> Option<&str> {
        if alts.iter().any(|a| installed.contains(a)) {
            return None;
        }
        alts.iter().find_map(|a| provider.get(a.as_str()).copied())
    };
    let mut level: BTreeMap<&str, usize> = pkgs.iter().map(|p| (p.name.as_str(), 0)).collect();
    // Longest-path relaxation; a Pre-Depends cycle cannot be ordered, so stop after n rounds.
    for _ in 0..pkgs.len().max(1) {
        let mut changed = false;
        for p in pkgs {
            let f = &fields[&p.name];
            let mut want = level[p.name.as_str()];
            for d in f
                .pre_depends
                .iter()
                .filter_map(target)
                .filter(|d| *d != p.name)
            {
                want = want.max(level[d] + 1);
            }
            for d in f.depends.iter().filter_map(target) {
                want = want.max(level[d]);
            }
            if want != level[p.name.as_str()] {
                level.insert(p.name.as_str(), want.min(pkgs.len()));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut batches: BTreeMap<usize, Vec<&crate::debian::lock::LockedPackage>> = BTreeMap::new();
    for p in pkgs {
        batches.entry(level[p.name.as_str()]).or_default().push(p);
    }
    batches.into_values().collect()
}

/// Pre-Depends, Depends and Provides of each .deb, read with dpkg-deb.
fn read_fields(
    ctx: &Ctx<'_>,
    debs_dir: &Path,
    pkgs: &[&crate::debian::lock::LockedPackage],
    arch: &str,
) -> Result<BTreeMap<String, Fields>, InstallError> {
    let mut out = BTreeMap::new();
    for p in pkgs {
        let deb = debs_dir.join(deb_name(p));
        let o = Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .args(["Package", "Pre-Depends", "Depends", "Provides"])
            .output()
            .map_err(ctx.io(&deb))?;
        let text = String::from_utf8_lossy(&o.stdout);
        let para = control::parse(&text)
            .ok()
            .and_then(|v| v.into_iter().next())
            .unwrap_or_default();
        let names = |field: &str| -> Vec<Vec<String>> {
            parse_dependencies(para.get(field).unwrap_or(""), arch)
                .map(|deps| {
                    deps.into_iter()
                        .map(|alts| alts.into_iter().map(|r| r.name).collect())
                        .collect()
                })
                .unwrap_or_default()
        };
        let provides = para
            .get("Provides")
            .map(|t| {
                t.split(',')
                    .filter_map(|x| x.split_whitespace().next())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            p.name.clone(),
            Fields {
                pre_depends: names("Pre-Depends"),
                depends: names("Depends"),
                provides,
            },
        );
    }
    Ok(out)
}

/// Names (and provided names) dpkg already has installed in the tree.
fn installed_names(ctx: &Ctx<'_>) -> BTreeSet<String> {
    let text = fs::read_to_string(ctx.root.join("var/lib/dpkg/status")).unwrap_or_default();
    let mut out = BTreeSet::new();
    for p in control::parse(&text).unwrap_or_default() {
        if p.get("Status").is_some_and(|s| s.ends_with(" installed")) {
            out.insert(p.get("Package").unwrap_or_default().to_string());
            for prov in p.get("Provides").unwrap_or_default().split(',') {
                if let Some(n) = prov.split_whitespace().next() {
                    out.insert(n.to_string());
                }
            }
        }
    }
    out
}

/// The skeleton dpkg needs before the first package, with merged /usr as trixie and later expect.
fn bootstrap_tree(ctx: &Ctx<'_>, arch: &str) -> Result<(), InstallError> {
    let mut dirs = vec![
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "etc/apt/apt.conf.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
        "tmp",
        "proc",
        "dev",
        "sys",
    ];
    let mut links = vec![("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")];
    if arch == "amd64" {
        dirs.push("usr/lib64");
        links.push(("lib64", "usr/lib64"));
    }
    for d in dirs {
        let p = ctx.root.join(d);
        fs::create_dir_all(&p).map_err(ctx.io(&p))?;
    }
    fs::set_permissions(ctx.root.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(ctx.io(&ctx.root.join("tmp")))?;
    for (link, target) in links {
        let p = ctx.root.join(link);
        if fs::symlink_metadata(&p).is_err() {
            symlink(target, &p).map_err(ctx.io(&p))?;
        }
    }
    write_file(ctx, "var/lib/dpkg/status", "", 0o644)?;
    write_file(ctx, "var/lib/dpkg/available", "", 0o644)?;
    write_file(ctx, "var/lib/dpkg/arch", &format!("{arch}\n"), 0o644)
}

/// Unpack a .deb's files without running anything (the Essential set before dpkg exists).
fn extract(ctx: &Ctx<'_>, deb: &Path) -> Result<(), InstallError> {
    let mut deb_cmd = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(ctx.io(deb))?;
    let stdout = deb_cmd.stdout.take().expect("piped");
    let tar = Command::new("tar")
        .args([
            "--extract",
            "--keep-directory-symlink",
            "--preserve-permissions",
            "--same-owner",
            "--file",
            "-",
            "--directory",
        ])
        .arg(&ctx.root)
        .stdin(stdout)
        .output()
        .map_err(ctx.io(deb))?;
    let status = deb_cmd.wait().map_err(ctx.io(deb))?;
    if !status.success() || !tar.status.success() {
        return Err(InstallError::Step {
            layer: ctx.name.into(),
            what: format!("extracting {}", deb.display()),
            status: format!("dpkg-deb {status}, tar {}", tar.status),
            tail: String::from_utf8_lossy(&tar.stderr).into_owned(),
        });
    }
    Ok(())
}

fn generate_locales(ctx: &Ctx<'_>, locales: &[String]) -> Result<(), InstallError> {
    let gen_file = ctx.root.join("etc/locale.gen");
    let mut text = fs::read_to_string(&gen_file).unwrap_or_default();
    for l in locales {
        let charset = l.split_once('.').map_or("UTF-8", |(_, c)| c);
        let line = format!("{l} {charset}");
        let commented = format!("# {line}");
        if text.lines().any(|x| x.trim() == line) {
            continue;
        }
        if text.contains(&commented) {
            text = text.replacen(&commented, &line, 1);
        } else {
            text.push_str(&line);
            text.push('\n');
        }
    }
    write_file(ctx, "etc/locale.gen", &text, 0o644)?;
    ctx.run(
        "locale-gen",
        &ctx.sandbox(false, Vec::new()),
        &["locale-gen".into()],
    )
}

/// Write a tree's entries onto the root filesystem.
fn materialize(ctx: &Ctx<'_>, tree: &LayerTree) -> Result<(), InstallError> {
    use std::os::unix::fs::MetadataExt;
    for e in tree.entries() {
        let p = ctx.root.join(&e.path);
        let err = ctx.io(&p);
        let res: io::Result<()> = (|| {
            match &e.kind {
                Kind::Dir => {
                    if let Ok(m) = fs::symlink_metadata(&p)
                        && m.is_dir()
                        && m.mode() & 0o7777 == e.mode
                        && (m.uid(), m.gid()) == (e.uid, e.gid)
                    {
                        return Ok(());
                    }
                    fs::create_dir_all(&p)?;
                }
                Kind::File(content) => {
                    remove_any(&p)?;
                    match content {
                        Content::Bytes(b) => fs::write(&p, b)?,
                        Content::Disk(src) => {
                            fs::copy(src, &p)?;
                        }
                    }
                }
                Kind::Symlink(target) => {
                    remove_any(&p)?;
                    symlink(target, &p)?;
                }
                Kind::Hardlink(target) => {
                    remove_any(&p)?;
                    fs::hard_link(ctx.root.join(target), &p)?;
                }
                Kind::Whiteout | Kind::Opaque => return remove_any(&p),
                Kind::Char(..) | Kind::Block(..) | Kind::Fifo => {
                    return Err(io::Error::other(
                        "device nodes cannot be declared in a layer",
                    ));
                }
            }
            std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid))?;
            if !matches!(e.kind, Kind::Symlink(_)) {
                fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))?;
                for (k, v) in &e.xattrs {
                    xattr::set(&p, k, v)?;
                }
            }
            Ok(())
        })();
        res.map_err(err)?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove the contents of `dir` (files and subdirectories), keeping `dir` itself.
fn empty_dir(p: &Path, keep_dirs: bool) -> io::Result<()> {
    let Ok(rd) = fs::read_dir(p) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let path = e.path();
        if keep_dirs && e.file_type()?.is_dir() {
            empty_dir(&path, true)?;
        } else {
            remove_any(&path)?;
        }
    }
    Ok(())
}

/// What must never be sealed into a layer: build-time helpers, caches, logs, host identity.
fn clean(ctx: &Ctx<'_>) -> Result<(), InstallError> {
    let r = &ctx.root;
    let mut doomed: Vec<PathBuf> = vec![
        r.join("usr/sbin/policy-rc.d"),
        r.join("etc/dpkg/dpkg.cfg.d/hakim-unsafe-io"),
        r.join(DEBS_IN_SANDBOX.trim_start_matches('/')),
        r.join("var/cache/ldconfig/aux-cache"),
        r.join("var/lib/systemd/catalog/database"),
    ];
    type Pick = fn(&str) -> bool;
    let globbed: [(&str, Pick); 5] = [
        ("etc/ssh", |n| n.starts_with("ssh_host_")),
        ("var/cache/apt", |n| n.ends_with(".bin")),
        ("var/cache/apt/archives", |n| n.ends_with(".deb")),
        ("var/cache/debconf", |n| n.ends_with("-old")),
        ("var/lib/dpkg", |n| n.ends_with("-old")),
    ];
    for (dir, pick) in globbed {
        if let Ok(rd) = fs::read_dir(r.join(dir)) {
            doomed.extend(
                rd.flatten()
                    .filter(|e| pick(&e.file_name().to_string_lossy()))
                    .map(|e| e.path()),
            );
        }
    }
    for p in &doomed {
        remove_any(p).map_err(ctx.io(p))?;
    }
    for (dir, keep_dirs) in [
        ("var/lib/apt/lists", true),
        ("var/cache/apt/archives/partial", false),
        ("var/log", true),
        ("tmp", false),
        ("var/tmp", false),
        ("var/cache/man", false),
    ] {
        let p = r.join(dir);
        empty_dir(&p, keep_dirs).map_err(ctx.io(&p))?;
    }
    // An empty machine-id makes systemd generate one at first boot.
    let mid = r.join("etc/machine-id");
    if mid.is_file() {
        fs::write(&mid, b"").map_err(ctx.io(&mid))?;
    }
    let dbus = r.join("var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus).is_ok_and(|m| m.is_file()) {
        fs::remove_file(&dbus).map_err(ctx.io(&dbus))?;
    }
    Ok(())
}
