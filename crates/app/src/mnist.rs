//! MNIST and Fashion-MNIST as IDX files, gzip-compressed or raw.
//!
//! An IDX file is a big-endian header (magic number, then one u32 per dimension) followed by the
//! u8 records: 2051 / `[count, 28, 28]` for images, 2049 / `[count]` for labels.
//!
//! No allocation is sized by a header before it is checked: a raw file's record count must match
//! its size, a gzip file's must stay under [`MAX_RECORDS`] and match what it decompresses to, and
//! a gzip file is read to its end so that its CRC and length trailer are verified.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use flate2::bufread::GzDecoder;
use sha2::{Digest, Sha256};

/// Images are `IMAGE_SIDE` x `IMAGE_SIDE` pixels.
pub const IMAGE_SIDE: usize = 28;
/// Pixels per image.
pub const IMAGE_LEN: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Labels are digits (or Fashion-MNIST classes) `0..CLASSES`.
pub const CLASSES: usize = 10;
/// The most records a file may claim: well above MNIST's 60,000 and EMNIST's 700,000, and a
/// bound (784 MB of images) on what a compressed file's header can make us read.
pub const MAX_RECORDS: usize = 1_000_000;

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;

/// One part of the dataset: `len()` images of `IMAGE_LEN` u8 pixels each, row-major, and their
/// labels.
#[derive(Debug)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Split {
    /// The 60,000 training images of `dir`, or the first `limit` of them.
    pub fn train(dir: &Path, limit: Option<usize>) -> Result<Split> {
        Split::load(
            dir,
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            limit,
        )
    }

    /// The 10,000 test images of `dir`, or the first `limit` of them.
    pub fn test(dir: &Path, limit: Option<usize>) -> Result<Split> {
        Split::load(
            dir,
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
            limit,
        )
    }

    /// Reads `images_name` and `labels_name` (each as NAME.gz or NAME) from `dir`, keeping the
    /// first `limit` records.
    pub fn load(
        dir: &Path,
        images_name: &str,
        labels_name: &str,
        limit: Option<usize>,
    ) -> Result<Split> {
        Split::read(
            IdxFile::open(dir, images_name)?,
            IdxFile::open(dir, labels_name)?,
            limit,
        )
    }

    /// Reads an images file and its labels file, keeping the first `limit` records.
    pub fn read(mut images: IdxFile, mut labels: IdxFile, limit: Option<usize>) -> Result<Split> {
        let [image_count, rows, cols] = images.read_header(IMAGES_MAGIC, "images")?;
        if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE) {
            bail!(
                "{}: images are {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}",
                images.path.display()
            );
        }
        let [label_count] = labels.read_header(LABELS_MAGIC, "labels")?;
        if image_count != label_count {
            bail!(
                "{} holds {image_count} images but {} holds {label_count} labels",
                images.path.display(),
                labels.path.display()
            );
        }
        if image_count == 0 {
            bail!("{} holds no images", images.path.display());
        }
        let keep = limit.map_or(image_count, |limit| limit.min(image_count));
        let image_data = images.read_records(image_count, keep, IMAGE_LEN, "images")?;
        let label_data = labels.read_records(label_count, keep, 1, "labels")?;
        if let Some(index) = label_data.iter().position(|&l| l as usize >= CLASSES) {
            bail!(
                "{}: label {} at record {index}, expected 0 to {}",
                labels.path.display(),
                label_data[index],
                CLASSES - 1
            );
        }
        Ok(Split {
            images: image_data,
            labels: label_data,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// SHA-256 of the split as the network reads it: every image's pixels, then the labels. A
    /// `.gz` file and its raw copy decode to the same split, so they have the same fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut hash = Sha256::new();
        hash.update(&self.images);
        hash.update(&self.labels);
        Fingerprint(hash.finalize().into())
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A split's [`Split::fingerprint`]: written and read as 64 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> Result<Fingerprint, String> {
        let expected = || "expected a SHA-256: 64 lowercase hex digits".to_string();
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        if text.len() != 64 {
            return Err(expected());
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
            *byte = digit(pair[0])
                .zip(digit(pair[1]))
                .map(|(h, l)| h << 4 | l)
                .ok_or_else(expected)?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// An open IDX file: where it came from, and its bytes, decompressed when it is gzip.
pub struct IdxFile {
    path: PathBuf,
    reader: Box<dyn Read>,
    /// A raw file's length, which bounds what its header may claim; None for gzip.
    raw_len: Option<u64>,
}

impl IdxFile {
    /// Opens `dir/name.gz` (decompressing as it reads) or else `dir/name`.
    pub fn open(dir: &Path, name: &str) -> Result<IdxFile> {
        let gz_path = dir.join(format!("{name}.gz"));
        let raw_path = dir.join(name);
        for (path, gz) in [(gz_path.clone(), true), (raw_path.clone(), false)] {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                // Permission denied and the like: say so, not "not found".
                Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
            };
            let len = file
                .metadata()
                .with_context(|| format!("reading the size of {}", path.display()))?
                .len();
            let reader = BufReader::new(file);
            return Ok(if gz {
                IdxFile::gzip(path, reader)
            } else {
                IdxFile::raw(path, reader, len)
            });
        }
        bail!(
            "MNIST file not found: neither {} nor {} exists",
            gz_path.display(),
            raw_path.display()
        )
    }

    /// An IDX file in memory (named `path` in errors), gzip-compressed when `gz`.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>, gz: bool) -> IdxFile {
        let len = bytes.len() as u64;
        if gz {
            IdxFile::gzip(path.to_path_buf(), Cursor::new(bytes))
        } else {
            IdxFile::raw(path.to_path_buf(), Cursor::new(bytes), len)
        }
    }

    fn gzip(path: PathBuf, reader: impl io::BufRead + 'static) -> IdxFile {
        IdxFile {
            path,
            reader: Box::new(GzDecoder::new(reader)),
            raw_len: None,
        }
    }

    fn raw(path: PathBuf, reader: impl Read + 'static, len: u64) -> IdxFile {
        IdxFile {
            path,
            reader: Box::new(reader),
            raw_len: Some(len),
        }
    }

    /// Reads the magic number and the `DIMS` dimensions of an IDX header.
    fn read_header<const DIMS: usize>(&mut self, magic: u32, what: &str) -> Result<[usize; DIMS]> {
        let path = &self.path;
        let mut read_u32 = || -> Result<u32> {
            let mut word = [0; 4];
            self.reader
                .read_exact(&mut word)
                .with_context(|| format!("{}: reading the IDX header", path.display()))?;
            Ok(u32::from_be_bytes(word))
        };
        let found = read_u32()?;
        if found != magic {
            bail!(
                "{}: magic number {found}, expected {magic} (IDX {what})",
                path.display()
            );
        }
        let mut dims = [0; DIMS];
        for dim in &mut dims {
            *dim = read_u32()? as usize;
        }
        if let Some(len) = &mut self.raw_len {
            *len = len.saturating_sub(4 * (DIMS as u64 + 1));
        }
        Ok(dims)
    }

    /// Reads the `count` records of `record_len` bytes that follow the header and keeps the first
    /// `keep`. The rest is read too, so that a gzip file's trailer is checked.
    fn read_records(
        &mut self,
        count: usize,
        keep: usize,
        record_len: usize,
        what: &str,
    ) -> Result<Vec<u8>> {
        let path = self.path.display();
        if count > MAX_RECORDS {
            bail!("{path}: header claims {count} {what}, more than the {MAX_RECORDS} allowed");
        }
        // Both at most MAX_RECORDS x IMAGE_LEN: no overflow.
        let (len, keep_len) = (count * record_len, keep * record_len);
        if let Some(available) = self.raw_len {
            if available < len as u64 {
                bail!(
                    "{path}: truncated: expected {count} {what}, the file ends after {}",
                    available / record_len as u64
                );
            }
        }
        let mut data = Vec::new();
        (&mut self.reader)
            .take(keep_len as u64)
            .read_to_end(&mut data)
            .with_context(|| format!("{path}: reading {what}"))?;
        // Reading one byte past the records finds trailing data and, in a gzip file, makes the
        // decoder check the CRC and length in its trailer.
        let rest = io::copy(
            &mut (&mut self.reader).take((len - keep_len) as u64 + 1),
            &mut io::sink(),
        )
        .with_context(|| format!("{path}: reading {what}"))?;
        let read = data.len() as u64 + rest;
        if read < len as u64 {
            bail!(
                "{path}: truncated: expected {count} {what}, the file ends after {}",
                read / record_len as u64
            );
        }
        if read > len as u64 {
            bail!("{path}: data after the {count} {what} the header announces");
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest of "abc" from FIPS 180-2, appendix B.1, and its text form read back.
    #[test]
    fn fingerprints_are_sha256_of_pixels_then_labels() {
        let split = Split {
            images: b"ab".to_vec(),
            labels: b"c".to_vec(),
        };
        let text = split.fingerprint().to_string();
        assert_eq!(
            text,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(text.parse::<Fingerprint>(), Ok(split.fingerprint()));
        for bad in [
            "",
            &text[1..],
            &text.to_uppercase(),
            &format!("{}g", &text[1..]),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}
