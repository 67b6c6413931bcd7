//! Unpacking pinned archives into layer entries, refusing anything that escapes `dest`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::entry::{Content, Entry, Kind, rel_path};
use crate::spec::ArchiveFormat;

/// Errors from unpacking an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the archive failed.
    #[error("{archive}: {source}")]
    Io { archive: String, source: io::Error },
    /// The zip container is broken.
    #[error("{archive}: {message}")]
    Zip { archive: String, message: String },
    /// An entry would land outside `dest`.
    #[error("{archive}: entry `{entry}` escapes the destination: {why}")]
    Escape {
        archive: String,
        entry: String,
        why: String,
    },
}

/// How to place an archive.
pub struct Placement<'a> {
    /// Label for errors (URL).
    pub label: &'a str,
    /// Destination inside the image, relative.
    pub dest: &'a str,
    /// Components to drop.
    pub strip: u32,
    /// Owner for every entry.
    pub uid: u32,
    /// Group for every entry.
    pub gid: u32,
    /// Mode for a single binary.
    pub binary_mode: u32,
}

/// Unpack `file` (already verified) into entries under `p.dest`.
pub fn unpack(
    file: &Path,
    format: ArchiveFormat,
    p: &Placement<'_>,
) -> Result<Vec<Entry>, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        archive: p.label.to_string(),
        source,
    };
    let open = || {
        File::open(file)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .map_err(io_err)
    };
    let raw = match format {
        ArchiveFormat::Binary => {
            let mut e = Entry::new(
                p.dest,
                Kind::File(Content::Disk(PathBuf::from(file))),
                p.binary_mode,
            );
            e.uid = p.uid;
            e.gid = p.gid;
            return Ok(vec![e]);
        }
        ArchiveFormat::Tar => read_tar(open()?, p)?,
        ArchiveFormat::TarGz => read_tar(flate2::read::MultiGzDecoder::new(open()?), p)?,
        ArchiveFormat::TarXz => read_tar(liblzma::read::XzDecoder::new_multi_decoder(open()?), p)?,
        ArchiveFormat::TarZst => read_tar(
            zstd::Decoder::new(File::open(file).map_err(io_err)?).map_err(io_err)?,
            p,
        )?,
        ArchiveFormat::Zip => read_zip(File::open(file).map_err(io_err)?, p)?,
    };
    place(raw, p)
}

/// An archive member before placement: its path inside the archive.
struct Raw {
    path: String,
    kind: Kind,
    mode: u32,
    mtime: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn read_tar(r: impl Read, p: &Placement<'_>) -> Result<Vec<Raw>, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        archive: p.label.to_string(),
        source,
    };
    let mut ar = tar::Archive::new(r);
    let mut out = Vec::new();
    for entry in ar.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644);
        let mtime = h.mtime().unwrap_or(0);
        let link = || {
            entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(link()),
            tar::EntryType::Link => Kind::Hardlink(link()),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                Kind::File(Content::Bytes(Vec::new()))
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(ArchiveError::Escape {
                    archive: p.label.to_string(),
                    entry: path,
                    why: format!("unsupported entry type {other:?}"),
                });
            }
        };
        let mut xattrs = BTreeMap::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        let kind = match kind {
            Kind::File(_) => {
                let mut buf = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut buf).map_err(io_err)?;
                Kind::File(Content::Bytes(buf))
            }
            k => k,
        };
        out.push(Raw {
            path,
            kind,
            mode,
            mtime,
            xattrs,
        });
    }
    Ok(out)
}

fn read_zip(f: File, p: &Placement<'_>) -> Result<Vec<Raw>, ArchiveError> {
    let zerr = |e: zip::result::ZipError| ArchiveError::Zip {
        archive: p.label.to_string(),
        message: e.to_string(),
    };
    let mut z = zip::ZipArchive::new(BufReader::new(f)).map_err(zerr)?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut file = z.by_index(i).map_err(zerr)?;
        let path = file.name().map_err(zerr)?.to_string();
        let unix = file.unix_mode();
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .map_err(|source| ArchiveError::Io {
                archive: p.label.to_string(),
                source,
            })?;
        let is_link = unix.is_some_and(|m| m & 0o170000 == 0o120000);
        let (kind, default_mode) = if file.is_dir() {
            (Kind::Dir, 0o755)
        } else if is_link {
            (
                Kind::Symlink(String::from_utf8_lossy(&buf).into_owned()),
                0o777,
            )
        } else {
            (Kind::File(Content::Bytes(buf)), 0o644)
        };
        let mode = unix.map(|m| m & 0o7777).unwrap_or(default_mode);
        out.push(Raw {
            path,
            kind,
            mode,
            mtime: 0,
            xattrs: BTreeMap::new(),
        });
    }
    Ok(out)
}

/// Resolve `.`/`..` lexically; `None` when it climbs above the start.
fn normalize(parts: impl IntoIterator<Item = String>) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in parts {
        match c.as_str() {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            _ => out.push(c),
        }
    }
    Some(out)
}

fn place(raw: Vec<Raw>, p: &Placement<'_>) -> Result<Vec<Entry>, ArchiveError> {
    let escape = |entry: &str, why: &str| ArchiveError::Escape {
        archive: p.label.to_string(),
        entry: entry.to_string(),
        why: why.to_string(),
    };
    let mut out = Vec::new();
    let mut links: BTreeSet<Vec<String>> = BTreeSet::new();
    for r in raw {
        if r.path.starts_with('/') {
            return Err(escape(&r.path, "absolute path"));
        }
        if r.path.split('/').any(|c| c == "..") {
            return Err(escape(&r.path, "`..` in path"));
        }
        let parts: Vec<String> = r
            .path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(String::from)
            .collect();
        if parts.len() <= p.strip as usize {
            continue;
        }
        let inner: Vec<String> = parts[p.strip as usize..].to_vec();
        // A member below a symlink from the same archive would be written through the link.
        for n in 1..inner.len() {
            if links.contains(&inner[..n]) {
                return Err(escape(
                    &r.path,
                    "a parent directory is a symlink in the same archive",
                ));
            }
        }
        let kind = match r.kind {
            Kind::Symlink(target) => {
                if !target.starts_with('/') {
                    let base = inner[..inner.len() - 1].iter().cloned();
                    if normalize(base.chain(target.split('/').map(String::from))).is_none() {
                        return Err(escape(
                            &r.path,
                            &format!("symlink target `{target}` points outside the destination"),
                        ));
                    }
                }
                links.insert(inner.clone());
                Kind::Symlink(target)
            }
            Kind::Hardlink(target) => {
                let tparts: Vec<String> = target
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .map(String::from)
                    .collect();
                if target.starts_with('/')
                    || target.split('/').any(|c| c == "..")
                    || tparts.len() <= p.strip as usize
                {
                    return Err(escape(
                        &r.path,
                        &format!("hardlink target `{target}` is outside the destination"),
                    ));
                }
                let t = join(p.dest, &tparts[p.strip as usize..]);
                Kind::Hardlink(t)
            }
            k => k,
        };
        let mut e = Entry::new(join(p.dest, &inner), kind, r.mode & 0o7777);
        e.uid = p.uid;
        e.gid = p.gid;
        e.mtime = r.mtime;
        e.xattrs = r.xattrs;
        out.push(e);
    }
    Ok(out)
}

fn join(dest: &str, inner: &[String]) -> String {
    let tail = inner.join("/");
    rel_path(&format!("{dest}/{tail}")).unwrap_or(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(members: &[(&str, tar::EntryType, &str)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (path, t, link) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_mode(0o755);
            h.set_size(0);
            // Write names raw so `..` and absolute paths reach the reader as an attacker would send them.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        }
        b.finish().unwrap();
        f
    }

    fn placement() -> Placement<'static> {
        Placement {
            label: "t.tar",
            dest: "opt/x",
            strip: 1,
            uid: 0,
            gid: 0,
            binary_mode: 0o755,
        }
    }

    #[test]
    fn strips_and_places() {
        let f = tar_with(&[
            ("pkg/", tar::EntryType::Directory, ""),
            ("pkg/bin/a", tar::EntryType::Regular, ""),
            ("pkg/bin/b", tar::EntryType::Symlink, "a"),
        ]);
        let es = unpack(f.path(), ArchiveFormat::Tar, &placement()).unwrap();
        let paths: Vec<_> = es.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["opt/x/bin/a", "opt/x/bin/b"]);
    }

    #[test]
    fn rejects_escapes() {
        for (members, why) in [
            (
                vec![("pkg/../../etc/passwd", tar::EntryType::Regular, "")],
                "`..`",
            ),
            (
                vec![("/etc/passwd", tar::EntryType::Regular, "")],
                "absolute",
            ),
            (
                vec![("pkg/l", tar::EntryType::Symlink, "../../../etc")],
                "outside",
            ),
            (
                vec![
                    ("pkg/l", tar::EntryType::Symlink, "/etc"),
                    ("pkg/l/passwd", tar::EntryType::Regular, ""),
                ],
                "symlink in the same",
            ),
            (
                vec![("pkg/h", tar::EntryType::Link, "/etc/shadow")],
                "hardlink",
            ),
        ] {
            let f = tar_with(&members);
            let err = unpack(f.path(), ArchiveFormat::Tar, &placement())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err} should mention {why}");
            assert!(err.contains("t.tar"), "{err}");
        }
    }

    #[test]
    fn every_format_unpacks_to_the_same_tree() {
        use std::io::Write;
        let plain = tar_with(&[
            ("pkg/bin/a", tar::EntryType::Regular, ""),
            ("pkg/bin/b", tar::EntryType::Symlink, "a"),
        ]);
        let bytes = std::fs::read(plain.path()).unwrap();
        let write = |data: Vec<u8>| {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(&data).unwrap();
            f
        };
        let xz = write(liblzma::encode_all(bytes.as_slice(), 6).unwrap());
        let zst = write(zstd::encode_all(bytes.as_slice(), 3).unwrap());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        let gz = write(gz.finish().unwrap());
        let mut zip_bytes = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut zip_bytes);
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
            z.start_file("pkg/bin/a", opts).unwrap();
            z.add_symlink("pkg/bin/b", "a", opts).unwrap();
            z.finish().unwrap();
        }
        let zip_file = write(zip_bytes.into_inner());
        let p = placement();
        let shape = |es: Vec<Entry>| {
            es.into_iter()
                .map(|e| (e.path, matches!(e.kind, Kind::Symlink(_))))
                .collect::<Vec<_>>()
        };
        let want = shape(unpack(plain.path(), ArchiveFormat::Tar, &p).unwrap());
        for (f, fmt) in [
            (&gz, ArchiveFormat::TarGz),
            (&xz, ArchiveFormat::TarXz),
            (&zst, ArchiveFormat::TarZst),
            (&zip_file, ArchiveFormat::Zip),
        ] {
            assert_eq!(shape(unpack(f.path(), fmt, &p).unwrap()), want, "{fmt:?}");
        }
        let bin = unpack(
            plain.path(),
            ArchiveFormat::Binary,
            &Placement {
                dest: "usr/local/bin/tool",
                ..placement()
            },
        )
        .unwrap();
        assert_eq!(
            (bin[0].path.as_str(), bin[0].mode),
            ("usr/local/bin/tool", 0o755)
        );
    }

    #[test]
    fn guesses_formats() {
        assert_eq!(
            ArchiveFormat::guess("https://x.example/a-1.2.tar.gz?x=1"),
            Some(ArchiveFormat::TarGz)
        );
        assert_eq!(ArchiveFormat::guess("a.zip"), Some(ArchiveFormat::Zip));
        assert_eq!(ArchiveFormat::guess("tool"), None);
    }
}
