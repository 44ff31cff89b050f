//! MNIST and Fashion-MNIST as IDX files, gzip-compressed or raw.
//!
//! An IDX file is a big-endian header (magic number, then one u32 per dimension) followed by the
//! u8 records: 2051 / `[count, 28, 28]` for images, 2049 / `[count]` for labels.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use byteorder::{BigEndian, ReadBytesExt};
use flate2::read::GzDecoder;

/// Images are `IMAGE_SIDE` x `IMAGE_SIDE` pixels.
pub const IMAGE_SIDE: usize = 28;
/// Pixels per image.
pub const IMAGE_LEN: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Labels are digits (or Fashion-MNIST classes) `0..CLASSES`.
pub const CLASSES: usize = 10;

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
        let (images_path, mut images_file) = open(dir, images_name)?;
        let (labels_path, mut labels_file) = open(dir, labels_name)?;
        let image_count = read_images_header(&mut images_file, &images_path)?;
        let label_count = read_labels_header(&mut labels_file, &labels_path)?;
        if image_count != label_count {
            bail!(
                "{} holds {image_count} images but {} holds {label_count} labels",
                images_path.display(),
                labels_path.display()
            );
        }
        let count = limit.map_or(image_count, |limit| limit.min(image_count));
        let images = read_records(&mut images_file, &images_path, count, IMAGE_LEN, "images")?;
        let labels = read_records(&mut labels_file, &labels_path, count, 1, "labels")?;
        if let Some(index) = labels.iter().position(|&label| label as usize >= CLASSES) {
            bail!(
                "{}: label {} at record {index}, expected 0 to {}",
                labels_path.display(),
                labels[index],
                CLASSES - 1
            );
        }
        Ok(Split { images, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Opens `dir/name.gz` (decompressing as it reads) or else `dir/name`.
fn open(dir: &Path, name: &str) -> Result<(PathBuf, Box<dyn Read>)> {
    let gz_path = dir.join(format!("{name}.gz"));
    if gz_path.exists() {
        let file =
            File::open(&gz_path).with_context(|| format!("opening {}", gz_path.display()))?;
        return Ok((gz_path, Box::new(GzDecoder::new(BufReader::new(file)))));
    }
    let raw_path = dir.join(name);
    if raw_path.exists() {
        let file =
            File::open(&raw_path).with_context(|| format!("opening {}", raw_path.display()))?;
        return Ok((raw_path, Box::new(BufReader::new(file))));
    }
    bail!(
        "MNIST file not found: neither {} nor {} exists",
        gz_path.display(),
        raw_path.display()
    )
}

/// Checks the images header and returns the number of images.
fn read_images_header(reader: &mut dyn Read, path: &Path) -> Result<usize> {
    let [count, rows, cols] = read_header(reader, path, IMAGES_MAGIC, "images")?;
    if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE) {
        bail!(
            "{}: images are {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}",
            path.display()
        );
    }
    Ok(count)
}

/// Checks the labels header and returns the number of labels.
fn read_labels_header(reader: &mut dyn Read, path: &Path) -> Result<usize> {
    let [count] = read_header(reader, path, LABELS_MAGIC, "labels")?;
    Ok(count)
}

/// Reads the magic number and the `DIMS` dimensions of an IDX header.
fn read_header<const DIMS: usize>(
    reader: &mut dyn Read,
    path: &Path,
    magic: u32,
    what: &str,
) -> Result<[usize; DIMS]> {
    let mut read_u32 = || {
        reader
            .read_u32::<BigEndian>()
            .with_context(|| format!("{}: reading the IDX header", path.display()))
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
    Ok(dims)
}

/// Reads `count` records of `record_len` bytes that follow the header.
fn read_records(
    reader: &mut dyn Read,
    path: &Path,
    count: usize,
    record_len: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let len = count * record_len;
    let mut data = Vec::with_capacity(len);
    reader
        .take(len as u64)
        .read_to_end(&mut data)
        .with_context(|| format!("{}: reading {what}", path.display()))?;
    if data.len() < len {
        bail!(
            "{}: truncated: expected {count} {what}, the file ends after {}",
            path.display(),
            data.len() / record_len
        );
    }
    Ok(data)
}
