//! OCI media types and annotation keys: the one copy, low in the graph so the layer writer,
//! the layout and the registry client all name them alike.

/// An image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An image index.
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An image config.
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// An uncompressed layer.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// A gzip-compressed layer.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A zstd-compressed layer.
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Annotation naming a reference inside a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
