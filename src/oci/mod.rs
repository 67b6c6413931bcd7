//! Writing images: configs, manifests and indexes into an OCI layout; finding them again.

pub mod canonical;
pub mod devcontainer;
pub mod env_file;
pub mod image;
pub mod layout;
pub mod model;

use std::collections::BTreeMap;

use crate::digest::Sha256Digest;
use crate::layer::tarball::LayerBlob;
use crate::spec::ImageConfigSpec;
pub use image::{
    ImageError, LayerRef, ResolvedImage, find_variant_image, host_arch, image_for_arch,
    resolve_image,
};
pub use layout::{FoundImage, Layout, LayoutError};
use model::*;

/// One layer of an image, with the history it records.
#[derive(Clone, Debug)]
pub struct ImageLayer {
    /// The sealed blob.
    pub blob: LayerBlob,
    /// Layer name (history `created_by`).
    pub name: String,
    /// Layer description (history comment).
    pub comment: Option<String>,
}

/// Largest manifest, config or index registries (and skopeo) accept: 4 MiB.
pub const MAX_DOCUMENT: usize = 4 * 1024 * 1024;

/// Refuse a JSON document over [`MAX_DOCUMENT`] before anything is written.
pub fn check_document_size(what: &'static str, bytes: &[u8]) -> Result<(), LayoutError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(LayoutError::Oversized {
            what,
            size: bytes.len(),
            limit: MAX_DOCUMENT,
        });
    }
    Ok(())
}

/// RFC 3339 UTC time of a Unix timestamp.
pub fn rfc3339(epoch: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// The image config document for one architecture.
pub fn image_config(
    arch: &str,
    layers: &[ImageLayer],
    spec: &ImageConfigSpec,
    labels: &BTreeMap<String, String>,
    epoch: u64,
) -> ImageConfig {
    let platform = platform_for_debian_arch(arch);
    let created = rfc3339(epoch);
    let mut rc = RuntimeConfig::default();
    rc.set_user(spec.user.clone());
    // Any `Env` key, even empty, makes Proxmox drop the create-time env.
    let env: Vec<String> = match spec.env_file {
        Some(_) => Vec::new(),
        None => spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    };
    rc.set_env((!env.is_empty()).then_some(env));
    rc.set_entrypoint(spec.entrypoint.clone());
    rc.set_cmd(spec.cmd.clone());
    rc.set_volumes((!spec.volumes.is_empty()).then(|| spec.volumes.clone()));
    rc.set_working_dir(spec.workdir.clone());
    rc.set_labels(model::annotations(labels));
    rc.set_stop_signal(spec.stop_signal.clone());
    let mut rootfs = RootFs::default();
    rootfs.set_diff_ids(layers.iter().map(|l| l.blob.diff_id.oci()).collect());
    let history = layers
        .iter()
        .map(|l| {
            let mut h = History::default();
            h.set_created(Some(created.clone()));
            h.set_created_by(Some(format!("hakim layer {}", l.name)));
            h.set_comment(l.comment.clone());
            h
        })
        .collect();
    let mut config = ImageConfig::default();
    config.set_created(Some(created));
    config.set_architecture(platform.architecture().clone());
    config.set_variant(platform.variant().clone());
    config.set_os(platform.os().clone());
    config.set_config(Some(rc));
    config.set_rootfs(rootfs);
    config.set_history(Some(history));
    config
}

/// A written manifest (or index) with its descriptor.
#[derive(Clone, Debug)]
pub struct Written {
    /// Descriptor of the document.
    pub descriptor: Descriptor,
    /// Config digest (manifests only).
    pub config: Option<Sha256Digest>,
}

/// Write config + manifest for one architecture; layer blobs must already be in the layout.
pub fn write_manifest(
    layout: &Layout,
    arch: &str,
    layers: &[ImageLayer],
    spec: &ImageConfigSpec,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    epoch: u64,
) -> Result<Written, LayoutError> {
    let config = image_config(arch, layers, spec, labels, epoch);
    let config_bytes = canonical::to_vec(&config);
    check_document_size("config", &config_bytes)?;
    let config_digest = layout.put_blob_bytes(&config_bytes)?;
    let layers = layers
        .iter()
        .map(|l| model::descriptor(&l.blob.media_type, &l.blob.digest, l.blob.size))
        .collect::<Vec<_>>();
    let mut manifest = model::manifest(
        model::descriptor(MEDIA_CONFIG, &config_digest, config_bytes.len() as u64),
        layers,
    );
    manifest.set_annotations(model::annotations(annotations));
    let bytes = canonical::to_vec(&manifest);
    check_document_size("manifest", &bytes)?;
    let digest = layout.put_blob_bytes(&bytes)?;
    let mut descriptor = model::descriptor(MEDIA_MANIFEST, &digest, bytes.len() as u64);
    descriptor.set_platform(Some(platform_for_debian_arch(arch)));
    Ok(Written {
        descriptor,
        config: Some(config_digest),
    })
}

/// Write an image index over per-arch manifests.
pub fn write_index(
    layout: &Layout,
    manifests: Vec<Descriptor>,
    annotations: &BTreeMap<String, String>,
) -> Result<Written, LayoutError> {
    let mut index = Index::default();
    index.set_media_type(Some(MediaType::ImageIndex));
    index.set_manifests(manifests);
    index.set_annotations(model::annotations(annotations));
    let bytes = canonical::to_vec(&index);
    check_document_size("index", &bytes)?;
    let digest = layout.put_blob_bytes(&bytes)?;
    Ok(Written {
        descriptor: model::descriptor(MEDIA_INDEX, &digest, bytes.len() as u64),
        config: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::tarball::LayerBlob;

    fn layers() -> Vec<ImageLayer> {
        vec![ImageLayer {
            blob: LayerBlob {
                digest: Sha256Digest::of(b"blob"),
                diff_id: Sha256Digest::of(b"tar"),
                size: 4,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            },
            name: "files".into(),
            comment: Some("Plain files".into()),
        }]
    }

    fn spec() -> ImageConfigSpec {
        ImageConfigSpec {
            entrypoint: Some(vec!["/bin/hello".into()]),
            cmd: Some(vec!["--greet".into()]),
            env: BTreeMap::from([("LANG".into(), "C.UTF-8".into()), ("A".into(), "1".into())]),
            workdir: Some("/home/coder".into()),
            user: Some("coder".into()),
            stop_signal: Some("SIGTERM".into()),
            volumes: vec!["/home/coder".into(), "/data".into()],
            ..Default::default()
        }
    }

    fn many(prefix: &str) -> BTreeMap<String, String> {
        (0..40)
            .map(|i| (format!("{prefix}.{i}"), i.to_string()))
            .collect()
    }

    // The bytes the hand-written structs wrote before hakim used the oci-spec types (a build of
    // tests/fixtures/basic gives identical blobs with both): a field oci-spec adds, drops or
    // renames would change every image digest, so it must fail here first.
    #[test]
    fn config_bytes_are_the_ones_hakim_always_wrote() {
        let labels = BTreeMap::from([("com.example".to_string(), "yes".to_string())]);
        let config = image_config("arm64", &layers(), &spec(), &labels, 0);
        assert_eq!(
            String::from_utf8(canonical::to_vec(&config)).unwrap(),
            r#"{"architecture":"arm64","config":{"Cmd":["--greet"],"Entrypoint":["/bin/hello"],"Env":["A=1","LANG=C.UTF-8"],"Labels":{"com.example":"yes"},"StopSignal":"SIGTERM","User":"coder","Volumes":{"/data":{},"/home/coder":{}},"WorkingDir":"/home/coder"},"created":"1970-01-01T00:00:00Z","history":[{"comment":"Plain files","created":"1970-01-01T00:00:00Z","created_by":"hakim layer files"}],"os":"linux","rootfs":{"diff_ids":["sha256:90aebae315675cbf04612de4f7d5874850f48e0b8dd82becbeaa47ca93f5ebfb"],"type":"layers"},"variant":"v8"}"#
        );
    }

    // oci-spec keeps labels and annotations in HashMaps, whose order differs between two maps
    // even in one process: the documents must not.
    #[test]
    fn documents_do_not_depend_on_map_order() {
        let write = || {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout::open_or_create(dir.path()).unwrap();
            let m = write_manifest(
                &layout,
                "amd64",
                &layers(),
                &spec(),
                &many("label"),
                &many("annotation"),
                0,
            )
            .unwrap();
            let i = write_index(&layout, vec![m.descriptor.clone()], &many("index")).unwrap();
            (
                model::sha256(&m.descriptor).unwrap(),
                model::sha256(&i.descriptor).unwrap(),
            )
        };
        let first = write();
        for _ in 0..5 {
            assert_eq!(write(), first);
        }
    }
}
