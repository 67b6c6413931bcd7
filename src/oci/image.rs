//! Finding built images in a layout: a variant's ref (by the ref names the build wrote) and
//! the manifest of one architecture, with its layer blobs and diff ids.

use std::path::{Path, PathBuf};

use super::model::{self, ImageConfig};
use super::{Layout, LayoutError};
use crate::digest::Sha256Digest;
use crate::spec::Variant;

/// Errors from finding an image in a layout.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is not in the layout.
    #[error(
        "image `{reference}` of variant `{variant}` is not in {layout}: run `hakim build {variant}` first"
    )]
    NotBuilt {
        variant: String,
        reference: String,
        layout: PathBuf,
    },
    /// Several refs of a variant match its tag templates but name different images.
    #[error("variant `{variant}` has several builds in the layout ({refs}): pick one with --tag")]
    Ambiguous { variant: String, refs: String },
    /// Reading the layout failed.
    #[error(transparent)]
    Layout(Box<LayoutError>),
    /// An image document is unusable.
    #[error("{path}: {message}")]
    BadImage { path: PathBuf, message: String },
}

impl From<LayoutError> for ImageError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(Box::new(e))
    }
}

/// One layer blob of a resolved image.
#[derive(Clone, Debug)]
pub struct LayerRef {
    /// The blob file in the layout.
    pub blob: PathBuf,
    /// Its media type.
    pub media_type: String,
    /// Digest of the blob as stored.
    pub digest: Sha256Digest,
    /// Size of the blob as stored.
    pub size: u64,
    /// Digest of its uncompressed tar.
    pub diff_id: Sha256Digest,
}

/// An image found in a layout, for one architecture.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The `name:tag` it was found under.
    pub reference: String,
    /// Manifest digest.
    pub manifest: Sha256Digest,
    /// The image config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerRef>,
}

/// The Debian name of the architecture hakim runs on.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "x86" => "i386",
        "powerpc64" => "ppc64el",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// The ref the last build of `variant` wrote: `name:tag` when a tag is given, else the refs of
/// the variant's name in the layout matched against its tag templates in order (no git is
/// asked and nothing re-expanded, so `{version}` tags are found too). When several matching
/// refs name different images, the newest build wins; without that record, `--tag` decides.
pub fn variant_ref(
    layout: &Layout,
    variant: &Variant,
    tag: Option<&str>,
) -> Result<String, ImageError> {
    if let Some(t) = tag {
        return Ok(format!("{}:{t}", variant.name));
    }
    let prefix = format!("{}:", variant.name);
    let refs = layout.refs()?;
    let newest = layout.newest(&variant.name)?;
    for template in &variant.tags {
        let hits: Vec<&(String, _)> = refs
            .iter()
            .filter(|(r, _)| {
                r.strip_prefix(&prefix)
                    .is_some_and(|t| crate::git::template_matches(template, t))
            })
            .collect();
        let Some((first, d)) = hits.first() else {
            continue;
        };
        if hits.iter().all(|(_, h)| h.digest() == d.digest()) {
            return Ok(first.clone());
        }
        let newest = newest.map(|n| model::oci_digest(&n));
        if let Some((r, _)) = hits
            .iter()
            .find(|(_, h)| Some(h.digest()) == newest.as_ref())
        {
            return Ok(r.clone());
        }
        let names: Vec<&str> = hits.iter().map(|(r, _)| r.as_str()).collect();
        return Err(ImageError::Ambiguous {
            variant: variant.key.clone(),
            refs: names.join(", "),
        });
    }
    Err(ImageError::NotBuilt {
        variant: variant.key.clone(),
        reference: format!("{}:{}", variant.name, variant.tags.join("|")),
        layout: layout.dir().to_path_buf(),
    })
}

/// The image the last build of `variant` wrote into the layout at `layout_dir` (see
/// [`variant_ref`]), for `arch`: what `hakim run` and `hakim test` start from.
pub fn find_variant_image(
    layout_dir: &Path,
    variant: &Variant,
    tag: Option<&str>,
    arch: &str,
) -> Result<ResolvedImage, ImageError> {
    let not_built = |reference: String| ImageError::NotBuilt {
        variant: variant.key.clone(),
        reference,
        layout: layout_dir.to_path_buf(),
    };
    if !layout_dir.join("oci-layout").exists() {
        return Err(not_built(format!(
            "{}:{}",
            variant.name,
            variant.tags.join("|")
        )));
    }
    let layout = Layout::open(layout_dir)?;
    let reference = variant_ref(&layout, variant, tag)?;
    match image_for_arch(&layout, &reference, arch) {
        Err(ImageError::Layout(e)) if matches!(*e, LayoutError::RefNotFound { .. }) => {
            Err(not_built(reference))
        }
        other => other,
    }
}

/// Resolve the first of `references` found in the layout at `layout_dir` for `arch`.
pub fn resolve_image(
    layout_dir: &Path,
    variant: &str,
    references: &[String],
    arch: &str,
) -> Result<ResolvedImage, ImageError> {
    let not_built = || ImageError::NotBuilt {
        variant: variant.to_string(),
        reference: references
            .first()
            .cloned()
            .unwrap_or_else(|| format!("{variant}:?")),
        layout: layout_dir.to_path_buf(),
    };
    let layout = match Layout::open(layout_dir) {
        Ok(l) => l,
        Err(LayoutError::Invalid { .. }) if !layout_dir.join("oci-layout").exists() => {
            return Err(not_built());
        }
        Err(e) => return Err(e.into()),
    };
    let names: Vec<String> = layout.refs()?.into_iter().map(|(n, _)| n).collect();
    let reference = references
        .iter()
        .find(|r| names.contains(r))
        .ok_or_else(not_built)?;
    image_for_arch(&layout, reference, arch)
}

/// The image `reference` names in `layout`, for `arch`.
pub fn image_for_arch(
    layout: &Layout,
    reference: &str,
    arch: &str,
) -> Result<ResolvedImage, ImageError> {
    let found = layout.image(reference, &model::platform_for_debian_arch(arch))?;
    let (manifest, config) = (&found.manifest, &found.config);
    let config_path = layout.blob_path_of(manifest.config())?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::BadImage {
            path: config_path,
            message: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        });
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, diff_id)| {
            let digest = layout.digest_of(l)?;
            Ok(LayerRef {
                blob: layout.blob_path(&digest),
                media_type: l.media_type().to_string(),
                digest,
                size: l.size(),
                diff_id: diff_id.parse().map_err(|e| ImageError::BadImage {
                    path: config_path.clone(),
                    message: format!("diff_id: {e}"),
                })?,
            })
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(ResolvedImage {
        reference: found.reference,
        manifest: layout.digest_of(&found.descriptor)?,
        config: found.config,
        layers,
    })
}
