//! `hakim run`: run a command inside a built image, as a container runtime would.

use anyhow::Result;
use clap::Args;
use hakim::rootfs::{self, MountedImage, RootfsCache, image};

use super::{Paths, exit::Status, pick_arch, source_date_epoch};

/// Arguments of `hakim run`.
#[derive(Args)]
pub struct RunArgs {
    /// The variant.
    pub variant: String,
    /// Architecture (default: this machine's, when the variant has it).
    #[arg(long)]
    pub arch: Option<String>,
    /// Tag to run (default: the variant's first tag found in the layout).
    #[arg(long)]
    pub tag: Option<String>,
    /// Share the host network.
    #[arg(long)]
    pub network: bool,
    /// User to run as (default: the image's).
    #[arg(long)]
    pub user: Option<String>,
    /// Command (default: the image's entrypoint and cmd).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Run the command; the status is the command's own exit code (128 + signal when killed).
/// An error here means hakim failed before the command ran: the caller exits 125 for it.
pub fn run(paths: &Paths, args: RunArgs) -> Result<Status> {
    let project = paths.load()?;
    let v = project.variant(&args.variant)?;
    let arch = pick_arch(v, args.arch);
    let refs = image::variant_refs(&project.root, v, source_date_epoch()?, args.tag.as_deref());
    let img = rootfs::resolve_image(&paths.layout(), &v.key, &refs, &arch)?;
    let mounted = MountedImage::mount(&img, &RootfsCache::new(&paths.cache))?;
    let mut sb = mounted.sandbox(args.user.as_deref())?;
    sb.network = args.network;
    let argv = if args.command.is_empty() {
        image::default_command(mounted.config())
    } else {
        args.command
    };
    anyhow::ensure!(
        !argv.is_empty(),
        "`{}` has no entrypoint or cmd: give a command after `--`",
        img.reference
    );
    let code = rootfs::sandbox::run_foreground(sb.command(&argv)?)?;
    // Unmount before exiting: process::exit would skip the drop.
    drop(mounted);
    Ok(Status::from_code(code))
}
