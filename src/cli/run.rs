//! `hakim run`: run a command inside a built image, as a container runtime would.

use anyhow::Result;
use clap::Args;
use hakim::imagetest::{Images, RunRequest};

use super::{Paths, exit::Status, pick_arch};

/// Arguments of `hakim run`.
#[derive(Args)]
pub struct RunArgs {
    /// The variant.
    pub variant: String,
    /// Architecture (default: this machine's, when the variant has it).
    #[arg(long)]
    pub arch: Option<String>,
    /// Tag to run (default: the newest build's ref matching the variant's tags).
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
    let code = Images::new(paths.layout(), &paths.cache).run(
        v,
        &arch,
        RunRequest {
            tag: args.tag.as_deref(),
            network: args.network,
            user: args.user.as_deref(),
            command: args.command,
        },
    )?;
    Ok(Status::from_code(code))
}
