//! OCI image JSON documents: the `oci-spec` types, plus the few helpers hakim needs on top
//! (the platform of a Debian arch, platform matching, SHA-256 digests). Documents are written
//! only through [`super::canonical`], so the HashMaps `oci-spec` keeps annotations and labels
//! in never decide the bytes.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use oci_spec::image::ImageManifestBuilder;
pub use oci_spec::image::{
    Arch, Config as RuntimeConfig, Descriptor, Digest, History, ImageConfiguration as ImageConfig,
    ImageIndex as Index, ImageManifest as Manifest, MediaType, Os, Platform, RootFs,
};

use crate::digest::{BadDigest, Sha256Digest};
pub use crate::media::{
    CONFIG as MEDIA_CONFIG, INDEX as MEDIA_INDEX, MANIFEST as MEDIA_MANIFEST, REF_NAME,
};

/// The OCI platform of a Debian architecture.
pub fn platform_for_debian_arch(arch: &str) -> Platform {
    let (architecture, variant) = match arch {
        "amd64" => ("amd64", None),
        "arm64" => ("arm64", Some("v8")),
        "armhf" => ("arm", Some("v7")),
        "i386" => ("386", None),
        "ppc64el" => ("ppc64le", None),
        other => (other, None),
    };
    let mut p = Platform::default();
    p.set_architecture(Arch::from(architecture));
    p.set_os(Os::from("linux"));
    p.set_variant(variant.map(Into::into));
    p
}

/// Whether `got` is the platform `want` names (any variant matches when `want` names none).
pub fn platform_matches(want: &Platform, got: &Platform) -> bool {
    want.architecture() == got.architecture()
        && want.os() == got.os()
        && (want.variant().is_none() || want.variant() == got.variant())
}

/// `os/arch[/variant]`, as registries and `docker` print a platform.
pub fn platform_string(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

/// A descriptor of `size` bytes of `media_type` content with digest `digest`.
pub fn descriptor(media_type: &str, digest: &Sha256Digest, size: u64) -> Descriptor {
    Descriptor::new(MediaType::from(media_type), size, oci_digest(digest))
}

/// A hakim digest as an `oci-spec` one.
pub fn oci_digest(d: &Sha256Digest) -> Digest {
    Digest::from_str(&d.oci()).expect("a sha256 digest is a valid OCI digest")
}

/// A descriptor's digest as SHA-256: the only algorithm hakim stores, verifies and pushes.
pub fn sha256(d: &Descriptor) -> Result<Sha256Digest, BadDigest> {
    d.digest().as_ref().parse()
}

/// An annotation of a descriptor.
pub fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations().as_ref()?.get(key).map(String::as_str)
}

/// Annotations as `oci-spec` keeps them: absent when empty, so empty maps are never written.
pub fn annotations(map: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    (!map.is_empty()).then(|| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// An OCI image manifest over `config` and `layers` (bottom first).
pub fn manifest(config: Descriptor, layers: Vec<Descriptor>) -> Manifest {
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .expect("every required manifest field is set")
}
