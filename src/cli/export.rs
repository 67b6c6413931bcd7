//! `hakim export`: build the variant if it is missing, then write it as a file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use hakim::export::{self, Compression, Dest, ExportRequest, Format};

use super::build::{BuildRequest, build_variants};
use super::exit::Status;
use super::{Paths, pick_arch, print_json, progress::size, source_date_epoch};

/// The export formats.
#[derive(Subcommand)]
pub enum ExportCommand {
    /// Single-platform OCI archive (`.tar`) that Proxmox VE 9.1+ imports as a CT template.
    OciArchive(Common),
    /// Flattened system-container rootfs tarball for `pct create` and `lxc-create -t local`.
    Rootfs {
        #[command(flatten)]
        common: Common,
        /// Compression of the tarball (and of the --lxc-meta tarball).
        #[arg(long, value_enum, default_value_t = Comp::Xz)]
        compression: Comp,
        /// Also write `<name>.meta.tar.<ext>` for `lxc-create -t local -- -m META -f ROOTFS`.
        #[arg(long)]
        lxc_meta: bool,
    },
    /// Tarball for `docker load` / `podman load`; `-o -` streams it to stdout.
    DockerArchive(Common),
}

/// Options every format takes.
#[derive(Args)]
pub struct Common {
    /// The variant.
    variant: String,
    /// Architecture (default: this machine's, when the variant has it).
    #[arg(long)]
    arch: Option<String>,
    /// Tag to export (default: the variant's first tag found in the layout).
    #[arg(long)]
    tag: Option<String>,
    /// Output file, or an existing directory for the default name (default: <out>/export/).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Make no network requests when the variant must be built first.
    #[arg(long)]
    offline: bool,
    /// Print path, size and sha256 as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `--compression` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum Comp {
    /// xz, multi-threaded (`.tar.xz`).
    Xz,
    /// zstd, multi-threaded (`.tar.zst`).
    Zstd,
    /// gzip, multi-threaded (`.tar.gz`).
    Gzip,
}

impl From<Comp> for Compression {
    fn from(c: Comp) -> Self {
        match c {
            Comp::Xz => Compression::Xz,
            Comp::Zstd => Compression::Zstd,
            Comp::Gzip => Compression::Gzip,
        }
    }
}

/// Run `hakim export <format> …`.
pub async fn run(paths: &Paths, cmd: ExportCommand) -> Result<Status> {
    let (format, common, compression, lxc_meta) = match cmd {
        ExportCommand::OciArchive(c) => (Format::OciArchive, c, Compression::Xz, false),
        ExportCommand::DockerArchive(c) => (Format::DockerArchive, c, Compression::Xz, false),
        ExportCommand::Rootfs {
            common,
            compression,
            lxc_meta,
        } => (Format::Rootfs, common, compression.into(), lxc_meta),
    };
    let to_stdout = common.output.as_deref() == Some(Path::new("-"));
    if to_stdout && format != Format::DockerArchive {
        bail!("only docker-archive can be written to stdout (`-o -`)");
    }
    let project = paths.load()?;
    let v = project.variant(&common.variant)?;
    if let Some(a) = &common.arch
        && !v.archs.contains(a)
    {
        bail!(
            "variant `{}` has no architecture `{a}` (it has: {})",
            v.key,
            v.archs.join(", ")
        );
    }
    let arch = pick_arch(v, common.arch.clone());
    if let Some(o) = common.output.as_deref().filter(|_| !to_stdout) {
        existing_dir(o)?;
    }
    // As `push` does: a warm build is a no-op, a missing image gets built.
    build_variants(
        paths,
        &BuildRequest {
            variants: std::slice::from_ref(&v.key),
            quiet: common.json || to_stdout,
            offline: common.offline,
            ..BuildRequest::default()
        },
    )
    .await?;
    let epoch = source_date_epoch()?;
    let layout = paths.layout();
    // The build above opened the cache, which made this directory.
    let scratch = paths.cache.join("tmp");
    let img = hakim::oci::find_variant_image(&layout, v, common.tag.as_deref(), &arch)?;
    let dest = if to_stdout {
        Dest::Stdout
    } else {
        let name = export::default_file_name(format, v, &img.reference, &arch, compression);
        Dest::File(output_path(paths, common.output.as_deref(), &name)?)
    };
    let report = export::export(&ExportRequest {
        format,
        variant: v,
        arch: &arch,
        layout: &layout,
        image: &img,
        dest,
        compression,
        lxc_meta,
        epoch,
        scratch: Some(&scratch),
    })?;
    if common.json && !to_stdout {
        print_json(&report)?;
    } else {
        for f in std::iter::once(&report.file).chain(&report.meta) {
            if !to_stdout {
                println!("{}", f.path.display());
            }
            eprintln!(
                "{} {}: {} sha256:{}",
                report.reference,
                f.path.display(),
                size(f.size),
                f.sha256.hex()
            );
        }
    }
    Ok(Status::SUCCESS)
}

/// `-o` as given; an existing directory gets the default name; no `-o` means <out>/export/.
fn output_path(paths: &Paths, output: Option<&Path>, name: &str) -> Result<PathBuf> {
    let path = match output {
        Some(p) if p.is_dir() => p.join(name),
        Some(p) => p.to_path_buf(),
        None => {
            let dir = paths.out.join("export");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join(name)
        }
    };
    existing_dir(&path)?;
    Ok(path)
}

/// Fail early, before any build, when `-o` names a file in a missing directory.
fn existing_dir(output: &Path) -> Result<()> {
    if output.is_dir() {
        return Ok(());
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "-o {}: directory {} does not exist",
            output.display(),
            dir.display()
        );
    }
    Ok(())
}
