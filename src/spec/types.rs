//! The YAML schema of variants (`variants/<name>.yaml`) and layers (`layers/<name>/layer.yaml`).
//!
//! Every struct denies unknown keys so a typo is an error, not a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// One `variants/<name>.yaml` file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantFile {
    /// Image name, e.g. `hakim-base`.
    pub name: Option<Spanned<String>>,
    /// Free text.
    pub description: Option<Spanned<String>>,
    /// Variant whose layers, config, tags and tests this one inherits.
    pub from: Option<Spanned<String>>,
    /// Layers on top of the inherited ones, bottom first.
    #[serde(default)]
    pub layers: Vec<Spanned<String>>,
    /// Layers kept above every other layer, even those of variants built `from:` this one
    /// (e.g. a small, often-changed entrypoint); replaces the inherited list when given.
    pub top_layers: Option<Vec<Spanned<String>>>,
    /// Architectures (Debian names: amd64, arm64).
    pub archs: Option<Spanned<Vec<String>>>,
    /// Layer compression.
    pub compression: Option<Spanned<Compression>>,
    /// Debian repository settings for package layers.
    pub debian: Option<DebianSettings>,
    /// Image config.
    pub config: Option<Spanned<ImageConfigSpec>>,
    /// Tags; templates `{git_sha}`, `{date}`, `{version}` are expanded.
    pub tags: Option<Spanned<Vec<Spanned<String>>>>,
    /// Smoke tests run inside the built image.
    #[serde(default)]
    pub tests: Vec<TestSpec>,
    /// System-container template for `hakim export rootfs` (after the layers' own blocks).
    pub rootfs: Option<Spanned<super::RootfsSpec>>,
}

/// Layer compression algorithm and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (the default; read by every runtime).
    #[default]
    Gzip,
    /// zstd (smaller and faster; needs a recent runtime).
    Zstd,
}

/// The `config:` block; everything optional and merged over the parent's.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageConfigSpec {
    /// Entrypoint argv.
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    pub cmd: Option<Vec<String>>,
    /// Environment; merged key by key over the parent's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// `user[:group]` the process runs as.
    pub user: Option<String>,
    /// Image config labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Manifest annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Signal that stops the container.
    pub stop_signal: Option<String>,
    /// Volume mount points.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// In-image file that carries `env` instead of the config's `Env` key, which Proxmox's
    /// OCI import would let replace the env given at create time.
    pub env_file: Option<String>,
    /// The workspace user a devcontainer tool should log in as (`devcontainer.metadata`).
    pub remote_user: Option<String>,
}

/// Debian repository settings (used by package layers).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DebianSettings {
    /// Suite codename, e.g. `trixie`.
    pub suite: Option<String>,
    /// Archive components.
    pub components: Option<Vec<String>>,
    /// Also use `<suite>-updates`.
    pub updates: Option<bool>,
    /// Also use `<suite>-security`.
    pub security: Option<bool>,
    /// Archive mirror URL (otherwise env or host apt sources).
    pub mirror: Option<String>,
    /// Security mirror URL.
    pub security_mirror: Option<String>,
    /// Snapshot timestamp `YYYYMMDDTHHMMSSZ`.
    pub snapshot: Option<String>,
    /// Snapshot service base URL.
    pub snapshot_mirror: Option<String>,
    /// OpenPGP keyring that signs the archive.
    pub keyring: Option<String>,
    /// Archive URL written into the image's apt sources (default: the mirror the build used).
    pub image_mirror: Option<String>,
    /// Security archive URL for the image's apt sources (default: the build's security mirror).
    pub image_security_mirror: Option<String>,
}

/// One smoke test.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    /// Short name shown in reports.
    pub name: String,
    /// Shell command run with `/bin/sh -c`.
    pub run: String,
    /// Expected exit code.
    #[serde(default)]
    pub exit_code: i32,
    /// Regex stdout must match.
    pub stdout: Option<String>,
    /// User to run as (default: the image user).
    pub user: Option<String>,
}

/// One `layers/<name>/layer.yaml` file as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LayerFile {
    /// Free text, shown in history.
    pub description: Option<String>,
    /// Debian packages installed with the image's own dpkg.
    #[serde(default)]
    pub packages: Vec<Spanned<String>>,
    /// Install Recommends too.
    #[serde(default)]
    pub recommends: bool,
    /// Locales generated after packages are installed.
    #[serde(default)]
    pub locales: Vec<String>,
    /// Files copied from next to `layer.yaml` (besides the implicit `rootfs/` tree).
    #[serde(default)]
    pub files: Vec<Spanned<FileSpec>>,
    /// Directories to create.
    #[serde(default)]
    pub directories: Vec<Spanned<DirSpec>>,
    /// Symlinks to create.
    #[serde(default)]
    pub symlinks: Vec<Spanned<SymlinkSpec>>,
    /// Remote or local archives, pinned by sha256.
    #[serde(default)]
    pub archives: Vec<Spanned<ArchiveSpec>>,
    /// Users and groups merged into the account databases below.
    pub accounts: Option<Spanned<AccountsSpec>>,
    /// Commands run in a sandbox over the layer's rootfs.
    #[serde(default)]
    pub run: Vec<Spanned<RunSpec>>,
    /// System-container template for `hakim export rootfs`; not part of the layer's bytes,
    /// so it is left out of the layer key.
    #[serde(default, skip_serializing)]
    pub rootfs: Option<Spanned<super::RootfsSpec>>,
}

/// `src` (relative to the layer dir) copied to `dest`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// File or directory next to `layer.yaml`.
    pub src: String,
    /// Absolute destination.
    pub dest: String,
    /// Octal mode, e.g. `"0755"` (default: 0644, or 0755 when the source is executable).
    pub mode: Option<Mode>,
    /// `user:group` as names or numbers (default root:root).
    pub owner: Option<String>,
}

/// A directory to create.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    /// Absolute path.
    pub path: String,
    /// Octal mode (default 0755).
    pub mode: Option<Mode>,
    /// `user:group` (default root:root).
    pub owner: Option<String>,
}

/// A symlink to create.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SymlinkSpec {
    /// Absolute path of the link.
    pub path: String,
    /// What it points to (kept verbatim).
    pub target: String,
}

/// An archive unpacked (or a binary placed) under `dest`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSpec {
    /// http(s) URL or a path relative to the layer dir; `{arch}` is expanded.
    pub url: String,
    /// sha256 for every arch, or one digest for all.
    pub sha256: Sha256Spec,
    /// Format; guessed from the URL when absent.
    pub format: Option<ArchiveFormat>,
    /// Leading path components dropped from every entry.
    #[serde(default)]
    pub strip_components: u32,
    /// Absolute destination directory (for `binary`: the file path).
    pub dest: String,
    /// Owner of unpacked entries (default root:root).
    pub owner: Option<String>,
    /// Mode for a `binary` (default 0755).
    pub mode: Option<Mode>,
}

/// One digest for all arches, or a digest per arch.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Sha256Spec {
    /// Same file for every arch.
    All(String),
    /// `arch: digest`.
    PerArch(BTreeMap<String, String>),
}

/// Archive formats.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    /// Plain tar.
    Tar,
    /// gzip tar.
    #[serde(rename = "tar.gz")]
    TarGz,
    /// xz tar.
    #[serde(rename = "tar.xz")]
    TarXz,
    /// zstd tar.
    #[serde(rename = "tar.zst")]
    TarZst,
    /// zip.
    Zip,
    /// A single file placed at `dest`.
    Binary,
}

impl ArchiveFormat {
    /// Guess the format from a URL or file name.
    pub fn guess(url: &str) -> Option<Self> {
        let name = url
            .rsplit('/')
            .next()
            .unwrap_or(url)
            .split(['?', '#'])
            .next()
            .unwrap_or(url);
        let pairs: &[(&str, Self)] = &[
            (".tar.gz", Self::TarGz),
            (".tgz", Self::TarGz),
            (".tar.xz", Self::TarXz),
            (".txz", Self::TarXz),
            (".tar.zst", Self::TarZst),
            (".tzst", Self::TarZst),
            (".tar", Self::Tar),
            (".zip", Self::Zip),
        ];
        pairs
            .iter()
            .find(|(ext, _)| name.ends_with(ext))
            .map(|(_, f)| *f)
    }
}

/// Octal file mode written as a string (`"0755"`) or an integer already in octal digits (`755`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ModeVisitor)
    }
}

struct ModeVisitor;

impl ModeVisitor {
    fn parse<E: serde::de::Error>(text: &str) -> Result<Mode, E> {
        let digits = text.trim_start_matches("0o");
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Mode)
            .ok_or_else(|| E::custom(format!("invalid octal mode `{text}`")))
    }
}

impl serde::de::Visitor<'_> for ModeVisitor {
    type Value = Mode;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an octal mode as a quoted string, e.g. mode: \"0600\"")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Mode, E> {
        Self::parse(v)
    }
    // An integer is taken as octal digits (`mode: 755`).
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Mode, E> {
        Self::parse(&v.to_string())
    }
    // The YAML reader turns a leading-zero number such as `0600` into a float, losing
    // what was written; ask for a string instead of guessing.
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Mode, E> {
        Err(E::custom(format!(
            "mode {v} was read as a YAML number; quote it: mode: \"0{v}\""
        )))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Mode, E> {
        Err(E::custom(format!(
            "mode {v} is negative; quote the octal digits, e.g. mode: \"0644\""
        )))
    }
}

/// Users and groups.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccountsSpec {
    /// Groups, created first.
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    /// Users.
    #[serde(default)]
    pub users: Vec<UserSpec>,
}

/// A group.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// Numeric id.
    pub gid: u32,
}

/// A user; its password is always locked.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// Login name.
    pub name: String,
    /// Numeric id.
    pub uid: u32,
    /// Primary group id (a group of the user's name is created when missing); default = uid.
    pub gid: Option<u32>,
    /// Supplementary groups (must exist below or in this layer).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Home directory (default `/home/<name>`), created owned by the user.
    pub home: Option<String>,
    /// Login shell (default `/bin/sh`).
    pub shell: Option<String>,
    /// GECOS field.
    pub comment: Option<String>,
}

/// A sandboxed command.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Shown in progress and history.
    pub name: Option<String>,
    /// Script run with `/bin/sh -ec`.
    pub script: String,
    /// Allow network access (off by default).
    #[serde(default)]
    pub network: bool,
}
