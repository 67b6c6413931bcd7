//! Merging per-arch manifests that separate CI jobs pushed into one multi-arch index, without
//! rebuilding: the index a local multi-arch build writes, byte for byte.
//!
//! Nothing is written until every arch has landed and matches its platform, so a failed or
//! late arch job never moves a tag to a partial image.

use std::time::Instant;

use serde::Deserialize;

use crate::digest::Sha256Digest;
use crate::oci::model::{
    self, Index, MEDIA_INDEX, MEDIA_MANIFEST, Manifest, MediaType, Platform,
    platform_for_debian_arch, platform_string,
};

use super::error::{PublishError, Result};
use super::registry::Registry;
use super::{Publisher, PushReport, PushedManifest, Target, validate_tag};

/// The tag an arch job pushes its manifest under: `<tag>-<debian arch>`.
pub fn arch_tag(tag: &str, arch: &str) -> String {
    format!("{tag}-{arch}")
}

#[derive(Deserialize)]
struct ConfigPlatform {
    architecture: String,
    os: String,
    variant: Option<String>,
}

/// One arch's manifest as the registry holds it.
struct ArchManifest {
    arch: String,
    bytes: Vec<u8>,
    manifest: Manifest,
}

impl Publisher {
    /// Merge the manifests tagged `<source_tag>-<arch>` in `target` for every arch of `archs`
    /// (Debian names, in index order) into one index, and point `tags` at it. With one arch the
    /// manifest itself is tagged, as a local build does.
    pub async fn merge(
        &self,
        target: &str,
        archs: &[String],
        source_tag: &str,
        tags: &[String],
    ) -> Result<PushReport> {
        let started = Instant::now();
        let target = Target::parse(target)?;
        validate_tag(source_tag)?;
        for t in tags {
            validate_tag(t)?;
        }
        let (reg, origin) = self.registry(&target)?;
        let found = fetch_arch_manifests(&reg, &target, archs, source_tag).await?;
        let mut manifests: Vec<PushedManifest> = found
            .iter()
            .map(|a| PushedManifest {
                digest: Sha256Digest::of(&a.bytes),
                media_type: MEDIA_MANIFEST.into(),
                size: a.bytes.len() as u64,
                platform: Some(platform_string(&platform_for_debian_arch(&a.arch))),
            })
            .collect();
        let (media_type, root) = if let [only] = found.as_slice() {
            (MEDIA_MANIFEST, only.bytes.clone())
        } else {
            (MEDIA_INDEX, index_bytes(&found))
        };
        let digest = Sha256Digest::of(&root);
        let repo = target.repository.as_str();
        let mut references = Vec::new();
        let mut refs: Vec<String> = vec![digest.oci()];
        refs.extend(tags.iter().cloned());
        for r in &refs {
            reg.with_retry(&format!("put {media_type} {repo}:{r}"), || {
                reg.put_manifest(repo, r, media_type, &root, &digest)
            })
            .await?;
        }
        for t in tags {
            references.push(format!("{}/{repo}:{t}@{digest}", target.host));
        }
        if found.len() > 1 {
            manifests.push(PushedManifest {
                digest,
                media_type: MEDIA_INDEX.into(),
                size: root.len() as u64,
                platform: None,
            });
        }
        Ok(PushReport {
            source: format!("{repo}:{}", arch_tag(source_tag, "<arch>")),
            repository: format!("{}/{repo}", target.host),
            digest,
            media_type: media_type.into(),
            tags: tags.to_vec(),
            references,
            manifests,
            blobs_uploaded: 0,
            blobs_mounted: 0,
            mounts: Vec::new(),
            blobs_present: 0,
            bytes_uploaded: 0,
            auth: origin,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// The index over `found`, serialized as `oci::write_index` does for a local build.
fn index_bytes(found: &[ArchManifest]) -> Vec<u8> {
    let mut index = Index::default();
    index.set_media_type(Some(MediaType::ImageIndex));
    index.set_manifests(
        found
            .iter()
            .map(|a| {
                let digest = Sha256Digest::of(&a.bytes);
                let mut d = model::descriptor(MEDIA_MANIFEST, &digest, a.bytes.len() as u64);
                d.set_platform(Some(platform_for_debian_arch(&a.arch)));
                d
            })
            .collect(),
    );
    // A build gives the index the same annotations as each of its manifests.
    index.set_annotations(
        found[0]
            .manifest
            .annotations()
            .clone()
            .filter(|a| !a.is_empty()),
    );
    crate::oci::canonical::to_vec(&index)
}

async fn fetch_arch_manifests(
    reg: &Registry,
    target: &Target,
    archs: &[String],
    source_tag: &str,
) -> Result<Vec<ArchManifest>> {
    let repo = target.repository.as_str();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for arch in archs {
        let reference = arch_tag(source_tag, arch);
        let got = reg
            .with_retry(&format!("GET manifest {repo}:{reference}"), || {
                reg.get_manifest(repo, &reference)
            })
            .await?;
        let Some((media_type, bytes)) = got else {
            missing.push(reference);
            continue;
        };
        let bad = |detail: String| PublishError::MergeMismatch {
            repository: format!("{}/{repo}", target.host),
            reference: reference.clone(),
            detail,
        };
        if media_type != MEDIA_MANIFEST {
            return Err(bad(format!(
                "media type `{media_type}`, expected an OCI image manifest"
            )));
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("unreadable: {e}")))?;
        check_platform(reg, repo, &manifest, arch)
            .await?
            .map_or(Ok(()), |d| Err(bad(d)))?;
        found.push(ArchManifest {
            arch: arch.clone(),
            bytes,
            manifest,
        });
    }
    if missing.is_empty() && !found.is_empty() {
        return Ok(found);
    }
    Err(PublishError::MergeIncomplete {
        repository: format!("{}/{repo}", target.host),
        missing: if archs.is_empty() {
            "no architectures given".into()
        } else {
            missing.join(", ")
        },
    })
}

/// Why the manifest's config does not describe `arch`, if it does not.
async fn check_platform(
    reg: &Registry,
    repo: &str,
    manifest: &Manifest,
    arch: &str,
) -> Result<Option<String>> {
    let Ok(digest) = model::sha256(manifest.config()) else {
        return Ok(Some(format!(
            "config digest {} is not sha256",
            manifest.config().digest()
        )));
    };
    let config = reg
        .with_retry(&format!("GET config {digest} of {repo}"), || {
            reg.get_blob(repo, &digest)
        })
        .await?;
    let Some(config) = config else {
        return Ok(Some(format!("config blob {digest} is missing")));
    };
    if Sha256Digest::of(&config) != digest {
        return Ok(Some(format!(
            "config blob {digest} does not match its digest"
        )));
    }
    let Ok(p) = serde_json::from_slice::<ConfigPlatform>(&config) else {
        return Ok(Some(format!("config blob {digest} has no platform")));
    };
    let want = platform_for_debian_arch(arch);
    let mut got = Platform::default();
    got.set_architecture(p.architecture.as_str().into());
    got.set_os(p.os.as_str().into());
    got.set_variant(p.variant);
    Ok((got != want).then(|| {
        format!(
            "image is {}, expected {} for arch {arch}",
            platform_string(&got),
            platform_string(&want)
        )
    }))
}
