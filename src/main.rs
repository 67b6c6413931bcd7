//! The `hakim` command line: parse, then dispatch to one file per command in `cli/`.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::{Paths, exit::Status};

#[derive(Parser)]
#[command(
    name = "hakim",
    version,
    about = "Build, test and publish Hakim workspace images"
)]
struct Cli {
    /// Project directory (default: nearest parent holding `variants/`).
    #[arg(long, global = true, env = "HAKIM_PROJECT")]
    project: Option<PathBuf>,
    /// Cache directory (default: $XDG_CACHE_HOME/hakim).
    #[arg(long, global = true, env = "HAKIM_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Output directory (default: <project>/out).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Seconds an HTTP request may receive nothing before it counts as stalled and is retried
    /// (a download that keeps flowing may take as long as it needs).
    #[arg(long, global = true, env = hakim::net::STALL_TIMEOUT_ENV, value_name = "SECONDS",
          value_parser = hakim::net::parse_timeout, default_value = "60")]
    http_timeout: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check every variant and layer.
    Validate,
    /// Build variants (all when none is named) into <out>/oci.
    Build(cli::build::BuildArgs),
    /// Show a variant's layers (digests, sizes, cache state) and resolved config.
    Inspect(cli::inspect::InspectArgs),
    /// Resolve Debian packages and write hakim.lock (all variants when none is named).
    Lock(cli::lock::LockArgs),
    /// Download every locked .deb of the variants into the cache.
    Fetch(cli::fetch::FetchArgs),
    /// Build if needed, then push variants to <registry>/<namespace>/<image name>.
    Push(cli::push::PushArgs),
    /// Run a command in a built variant's image (needs root).
    Run(cli::run::RunArgs),
    /// Run variants' `tests:` in their built images (all variants when none is named).
    Test(cli::test::TestArgs),
    /// Check the layer cache (verify) or reclaim its space (prune).
    Cache(cli::cache::CacheArgs),
    /// Write a built variant as a file: OCI archive, rootfs tarball or docker archive.
    Export {
        #[command(subcommand)]
        format: cli::export::ExportCommand,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = hakim::janitor::install_signal_cleanup() {
        eprintln!("warning: cannot handle SIGTERM/SIGINT cleanly: {e}");
    }
    // `hakim run` keeps the command's own codes, so its own failures get docker run's 125.
    let on_error = match cli.command {
        Command::Run(_) => Status::RUN_FAILED,
        _ => Status::FAILURE,
    };
    match dispatch(cli).await {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {}", cli::render_error(&e));
            on_error.into()
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<Status> {
    let command = match cli.command {
        // The cache needs no project.
        Command::Cache(args) => {
            let cache = cli.cache_dir.unwrap_or_else(cli::default_cache_dir);
            return cli::cache::run(&cache, args);
        }
        other => other,
    };
    let mut paths = Paths::resolve(cli.project, cli.cache_dir, cli.out)?;
    paths.stall_timeout = cli.http_timeout;
    match command {
        Command::Validate => cli::validate::run(&paths),
        Command::Build(args) => cli::build::run(&paths, args).await,
        Command::Inspect(args) => cli::inspect::run(&paths, args).await,
        Command::Lock(args) => cli::lock::run(&paths, args).await,
        Command::Fetch(args) => cli::fetch::run(&paths, args).await,
        Command::Push(args) => cli::push::run(&paths, args).await,
        Command::Run(args) => cli::run::run(&paths, args),
        Command::Test(args) => cli::test::run(&paths, args),
        Command::Cache(_) => unreachable!("handled above"),
        Command::Export { format } => cli::export::run(&paths, format).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// clap checks argument clashes (e.g. two flags with one id) only when a command is parsed.
    #[test]
    fn every_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
