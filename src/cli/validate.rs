//! `hakim validate`: parse and check every variant and layer.

use anyhow::Result;

use super::{Paths, exit::Status};

/// Load the project (which validates it) and say how much was checked.
pub fn run(paths: &Paths) -> Result<Status> {
    let project = paths.load()?;
    println!(
        "ok: {} variants, {} layers in {}",
        project.variants().count(),
        project.layers().count(),
        paths.project.display()
    );
    Ok(Status::SUCCESS)
}
