//! Whole-file compressors for rootfs exports, each giving the same bytes whatever the
//! number of threads: xz and gzip cut the input into fixed-size blocks, zstd always runs
//! its multi-threaded mode (whose output does not depend on the worker count).

use std::io::{self, Write};

use gzp::{ZWriter, deflate::Gzip, par::compress::ParCompressBuilder};
use serde::Serialize;

/// Compression of a rootfs tarball (and its LXC meta tarball).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `.tar.xz`: smallest; what Proxmox and distrobuilder templates usually are.
    #[default]
    Xz,
    /// `.tar.zst`: fast, still small.
    Zstd,
    /// `.tar.gz`: readable everywhere.
    Gzip,
}

impl Compression {
    /// File name extension after `.tar`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zst",
            Compression::Gzip => "gz",
        }
    }
}

/// xz block size: what `xz -6 -T0` uses (3 × the 8 MiB dictionary).
const XZ_BLOCK: u64 = 24 << 20;
/// zstd level (its default).
const ZSTD_LEVEL: i32 = 3;

fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// A running compressor over `W`.
pub(crate) enum Encoder<W: Write + Send + 'static> {
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
    Gzip(gzp::par::compress::ParCompress<'static, Gzip, W>),
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl<W: Write + Send + 'static> Encoder<W> {
    /// Start compressing into `w` with `threads` workers (0: one per CPU).
    pub fn new(c: Compression, w: W, threads_wanted: u32) -> io::Result<Self> {
        Self::with_xz_block(c, w, threads_wanted, XZ_BLOCK)
    }

    fn with_xz_block(c: Compression, w: W, threads_wanted: u32, block: u64) -> io::Result<Self> {
        let n = if threads_wanted == 0 {
            threads()
        } else {
            threads_wanted
        };
        Ok(match c {
            Compression::Xz => {
                let stream = liblzma::stream::MtStreamBuilder::new()
                    .threads(n)
                    .block_size(block)
                    .preset(6)
                    .check(liblzma::stream::Check::Crc64)
                    .encoder()
                    .map_err(other)?;
                Encoder::Xz(liblzma::write::XzEncoder::new_stream(w, stream))
            }
            Compression::Zstd => {
                let mut z = zstd::Encoder::new(w, ZSTD_LEVEL)?;
                z.multithread(n)?;
                z.include_checksum(true)?;
                Encoder::Zstd(z)
            }
            Compression::Gzip => Encoder::Gzip(
                ParCompressBuilder::<Gzip>::new()
                    .num_threads(n as usize)
                    .map_err(other)?
                    .compression_level(flate2::Compression::new(6))
                    .from_writer(w),
            ),
        })
    }

    /// End the stream and hand back the writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Xz(z) => z.finish(),
            Encoder::Zstd(z) => z.finish(),
            Encoder::Gzip(mut z) => z.finish().map_err(other),
        }
    }
}

impl<W: Write + Send + 'static> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Xz(z) => z.write(buf),
            Encoder::Zstd(z) => z.write(buf),
            Encoder::Gzip(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Xz(z) => z.flush(),
            Encoder::Zstd(z) => z.flush(),
            Encoder::Gzip(z) => z.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(c: Compression, threads: u32, data: &[u8]) -> Vec<u8> {
        let mut e = Encoder::with_xz_block(c, Vec::new(), threads, 1 << 20).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn output_does_not_depend_on_the_thread_count() {
        // Several blocks' worth of compressible but not trivial data.
        let data: Vec<u8> = (0..(3 << 20))
            .map(|i| ((i / 7) ^ (i >> 13)) as u8)
            .collect();
        for c in [Compression::Xz, Compression::Zstd, Compression::Gzip] {
            let one = compress(c, 1, &data);
            let four = compress(c, 4, &data);
            assert!(one == four, "{c:?} output differs between 1 and 4 threads");
        }
        let xz = compress(Compression::Xz, 2, b"hello");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut liblzma::read::XzDecoder::new(&xz[..]), &mut back).unwrap();
        assert_eq!(back, b"hello");
    }

    /// Compress `data` written in pieces whose sizes cycle through `sizes`.
    fn compress_in_pieces(c: Compression, data: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut e = Encoder::with_xz_block(c, Vec::new(), 2, 1 << 20).unwrap();
        let mut rest = data;
        for n in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*n).min(rest.len()));
            e.write_all(piece).unwrap();
            rest = tail;
        }
        e.finish().unwrap()
    }

    #[test]
    fn output_does_not_depend_on_the_write_sizes() {
        // How the bytes reach the encoder (the tar writer's small writes, a buffer's 1 MiB
        // ones) is an implementation detail an export's bytes must not depend on. The data
        // spans several xz blocks (1 MiB here) and gzip blocks, so boundaries fall inside
        // the pieces.
        let data: Vec<u8> = (0..(5 << 19))
            .map(|i| ((i / 5) ^ (i >> 11)) as u8)
            .collect();
        for c in [Compression::Xz, Compression::Zstd, Compression::Gzip] {
            let whole = compress_in_pieces(c, &data, &[data.len()]);
            for sizes in [&[1][..], &[1, 7, 511, 4099, 65_537, 3], &[1 << 20]] {
                let got = compress_in_pieces(c, &data, sizes);
                assert!(
                    got == whole,
                    "{c:?}: writes of {sizes:?} bytes gave other bytes than one write"
                );
            }
        }
    }
}
