//! The test stage: built images found in the layout by the refs the build wrote, mounted as
//! throwaway overlays and run, for `hakim run` (one command) and `hakim test` (a variant's
//! `tests:`). The last stage of the pipeline: it reads layouts through [`crate::oci`] and
//! mounts through [`crate::rootfs`], and nothing below imports it.

pub mod check;
pub mod mount;

use std::path::PathBuf;
use std::time::Duration;

pub use check::{TestOutcome, VariantTests};
pub use mount::{DEFAULT_PATH, MountedImage, UserIds, default_command, resolve_user};

use crate::oci::{ImageError, find_variant_image};
use crate::rootfs::{RootfsCache, RootfsError, sandbox};
use crate::spec::Variant;

/// Errors from running or testing a built image.
#[derive(Debug, thiserror::Error)]
pub enum TestStageError {
    /// The image could not be found in the layout.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Mounting or running it failed.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// `hakim run` without a command, on an image that names none.
    #[error("`{reference}` has no entrypoint or cmd: give a command after `--`")]
    NoCommand { reference: String },
}

/// Where built images live and where their unpacked layers are cached.
#[derive(Clone, Debug)]
pub struct Images {
    /// The OCI layout the build wrote.
    pub layout: PathBuf,
    /// The hakim cache directory (unpacked layers live below it).
    pub cache: PathBuf,
}

/// What `hakim run` runs, and how.
#[derive(Clone, Debug, Default)]
pub struct RunRequest<'a> {
    /// Tag to run (default: the newest build's ref matching the variant's tags).
    pub tag: Option<&'a str>,
    /// Share the host network.
    pub network: bool,
    /// User to run as (default: the image's).
    pub user: Option<&'a str>,
    /// Command (default: the image's entrypoint and cmd).
    pub command: Vec<String>,
}

impl Images {
    /// Images in the layout at `layout`, unpacked below `cache`.
    pub fn new(layout: impl Into<PathBuf>, cache: impl Into<PathBuf>) -> Self {
        Self {
            layout: layout.into(),
            cache: cache.into(),
        }
    }

    /// Run `variant`'s built image for `arch` in the foreground, as a container runtime would;
    /// the result is the command's own exit code (128 + signal when killed).
    pub fn run(
        &self,
        variant: &Variant,
        arch: &str,
        req: RunRequest<'_>,
    ) -> Result<i32, TestStageError> {
        let img = find_variant_image(&self.layout, variant, req.tag, arch)?;
        let mounted = MountedImage::mount(&img, &RootfsCache::new(&self.cache))?;
        let mut sb = mounted.sandbox(req.user)?;
        sb.network = req.network;
        let argv = if req.command.is_empty() {
            default_command(mounted.config())
        } else {
            req.command
        };
        if argv.is_empty() {
            return Err(TestStageError::NoCommand {
                reference: img.reference,
            });
        }
        let code = sandbox::run_foreground(sb.command(&argv)?)?;
        // Unmount before returning: the caller may exit the process, which skips drops.
        drop(mounted);
        Ok(code)
    }

    /// Run `variant`'s `tests:` in its built image for `arch`, each in a fresh overlay; a test
    /// runs at most `timeout`.
    pub fn test(
        &self,
        variant: &Variant,
        arch: &str,
        timeout: Duration,
    ) -> Result<VariantTests, TestStageError> {
        let img = find_variant_image(&self.layout, variant, None, arch)?;
        let cache = RootfsCache::new(&self.cache);
        Ok(check::test_variant(
            &variant.key,
            arch,
            &img,
            &variant.tests,
            &cache,
            timeout,
        )?)
    }
}
