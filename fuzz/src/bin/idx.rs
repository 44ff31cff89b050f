//! Fuzz target: an images file and a labels file through the IDX reader.
//!
//! Input: a flags byte (bit 0: images are gzip, bit 1: labels are gzip), the images file's length
//! as a little-endian u32, the images file, then the labels file.

use std::io::Read;
use std::path::Path;

use app::mnist::{IdxFile, Split};

fn main() {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .expect("reading stdin");
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let split_at = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (images, labels) = rest.split_at(split_at);
    let images = IdxFile::from_bytes(Path::new("images"), images.to_vec(), flags & 1 != 0);
    let labels = IdxFile::from_bytes(Path::new("labels"), labels.to_vec(), flags & 2 != 0);
    if let Ok(split) = Split::read(images, labels, None) {
        // A successful read is a consistent one.
        assert_eq!(split.images.len(), split.len() * app::mnist::IMAGE_LEN);
        assert!(split
            .labels
            .iter()
            .all(|&l| (l as usize) < app::mnist::CLASSES));
    }
}
