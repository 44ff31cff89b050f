//! Loading IDX files: gz and raw alike, and a clear error for every kind of bad file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use app::mnist::{Split, IMAGE_LEN};
use flate2::write::GzEncoder;
use flate2::Compression;

const IMAGES: &str = "train-images-idx3-ubyte";
const LABELS: &str = "train-labels-idx1-ubyte";

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("handwritten-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn images_file(magic: u32, count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [magic, count, rows, cols] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    bytes.extend_from_slice(pixels);
    bytes
}

fn labels_file(magic: u32, count: u32, labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [magic, count] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    bytes.extend_from_slice(labels);
    bytes
}

/// `count` images whose pixels differ from image to image.
fn pixels(count: usize) -> Vec<u8> {
    (0..count * IMAGE_LEN)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Writes a valid pair of three images (labels 3, 1, 4), raw.
fn write_valid(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let (images, labels) = (pixels(3), vec![3, 1, 4]);
    fs::write(dir.join(IMAGES), images_file(2051, 3, 28, 28, &images)).unwrap();
    fs::write(dir.join(LABELS), labels_file(2049, 3, &labels)).unwrap();
    (images, labels)
}

fn load(dir: &Path) -> anyhow::Result<Split> {
    Split::load(dir, IMAGES, LABELS, None)
}

/// The error's whole chain on one line, as the binary prints it.
fn load_error(dir: &Path) -> String {
    format!("{:#}", load(dir).expect_err("loading should fail"))
}

#[test]
fn raw_and_gz_files_load_the_same_records() {
    let raw = TempDir::new("raw");
    let (images, labels) = write_valid(&raw.0);
    let gz = TempDir::new("gz");
    for name in [IMAGES, LABELS] {
        let bytes = fs::read(raw.0.join(name)).unwrap();
        fs::write(gz.0.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
    }
    for dir in [&raw.0, &gz.0] {
        let split = load(dir).unwrap();
        assert_eq!(split.len(), 3);
        assert_eq!(split.images, images);
        assert_eq!(split.labels, labels);
    }
}

#[test]
fn limit_keeps_the_first_records() {
    let dir = TempDir::new("limit");
    let (images, labels) = write_valid(&dir.0);
    let split = Split::load(&dir.0, IMAGES, LABELS, Some(2)).unwrap();
    assert_eq!(split.images, images[..2 * IMAGE_LEN]);
    assert_eq!(split.labels, labels[..2]);
    let all = Split::load(&dir.0, IMAGES, LABELS, Some(100)).unwrap();
    assert_eq!(all.len(), 3);
}

#[test]
fn missing_file_names_both_paths_tried() {
    let dir = TempDir::new("missing");
    fs::write(dir.0.join(LABELS), labels_file(2049, 0, &[])).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains("not found"), "{err}");
    assert!(err.contains(&format!("{IMAGES}.gz")), "{err}");
    assert!(
        err.contains(&dir.0.join(IMAGES).display().to_string()),
        "{err}"
    );
}

#[test]
fn wrong_magic_numbers_are_named() {
    let dir = TempDir::new("magic");
    write_valid(&dir.0);
    fs::write(dir.0.join(IMAGES), images_file(2049, 3, 28, 28, &pixels(3))).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(IMAGES), "{err}");
    assert!(err.contains("magic number 2049, expected 2051"), "{err}");

    write_valid(&dir.0);
    fs::write(dir.0.join(LABELS), labels_file(2051, 3, &[3, 1, 4])).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(LABELS), "{err}");
    assert!(err.contains("magic number 2051, expected 2049"), "{err}");
}

#[test]
fn images_that_are_not_28x28_are_refused() {
    let dir = TempDir::new("dims");
    write_valid(&dir.0);
    fs::write(dir.0.join(IMAGES), images_file(2051, 3, 32, 24, &pixels(3))).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(IMAGES), "{err}");
    assert!(err.contains("32x24, expected 28x28"), "{err}");
}

#[test]
fn truncated_files_are_named() {
    let dir = TempDir::new("truncated");
    write_valid(&dir.0);
    let short = &pixels(3)[..2 * IMAGE_LEN + 100];
    fs::write(dir.0.join(IMAGES), images_file(2051, 3, 28, 28, short)).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(IMAGES), "{err}");
    assert!(err.contains("truncated: expected 3 images"), "{err}");

    write_valid(&dir.0);
    fs::write(dir.0.join(LABELS), labels_file(2049, 3, &[3, 1])).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(LABELS), "{err}");
    assert!(err.contains("truncated: expected 3 labels"), "{err}");

    write_valid(&dir.0);
    fs::write(dir.0.join(LABELS), &2049u32.to_be_bytes()[..3]).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(LABELS), "{err}");
    assert!(err.contains("IDX header"), "{err}");
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = TempDir::new("counts");
    write_valid(&dir.0);
    fs::write(dir.0.join(LABELS), labels_file(2049, 2, &[3, 1])).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(IMAGES) && err.contains(LABELS), "{err}");
    assert!(err.contains("3 images but"), "{err}");
    assert!(err.contains("2 labels"), "{err}");
}

#[test]
fn labels_above_nine_are_refused() {
    let dir = TempDir::new("label");
    write_valid(&dir.0);
    fs::write(dir.0.join(LABELS), labels_file(2049, 3, &[3, 10, 4])).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(LABELS), "{err}");
    assert!(
        err.contains("label 10 at record 1, expected 0 to 9"),
        "{err}"
    );
}

#[test]
fn an_empty_dataset_is_refused() {
    let dir = TempDir::new("empty");
    fs::write(dir.0.join(IMAGES), images_file(2051, 0, 28, 28, &[])).unwrap();
    fs::write(dir.0.join(LABELS), labels_file(2049, 0, &[])).unwrap();
    let err = load_error(&dir.0);
    assert!(
        err.contains(IMAGES) && err.contains("holds no images"),
        "{err}"
    );
}

#[test]
fn a_gz_file_with_a_bad_crc_or_trailing_data_is_refused() {
    let dir = TempDir::new("crc");
    let (images, labels) = (
        images_file(2051, 3, 28, 28, &pixels(3)),
        labels_file(2049, 3, &[3, 1, 4]),
    );
    fs::write(dir.0.join(LABELS), &labels).unwrap();
    let mut gz = gzip(&images);
    let crc_at = gz.len() - 8;
    gz[crc_at] ^= 0x10;
    fs::write(dir.0.join(format!("{IMAGES}.gz")), &gz).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(&format!("{IMAGES}.gz")), "{err}");
    assert!(
        err.contains("checksum") || err.contains("corrupt") || err.contains("invalid"),
        "{err}"
    );

    let mut longer = images.clone();
    longer.extend_from_slice(&[0; 10]);
    fs::write(dir.0.join(format!("{IMAGES}.gz")), gzip(&longer)).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains("data after the 3 images"), "{err}");
}

/// An error opening a file other than its absence (here: it is a directory) is reported as
/// itself: "permission denied" stays "permission denied", not "not found".
#[test]
fn an_unreadable_file_is_not_reported_as_missing() {
    let dir = TempDir::new("unreadable");
    write_valid(&dir.0);
    fs::remove_file(dir.0.join(IMAGES)).unwrap();
    fs::create_dir(dir.0.join(IMAGES)).unwrap();
    let err = load_error(&dir.0);
    assert!(!err.contains("not found"), "{err}");
    assert!(
        err.contains(IMAGES) && err.to_lowercase().contains("directory"),
        "{err}"
    );
}

#[test]
fn a_gz_file_that_is_not_gzip_is_named() {
    let dir = TempDir::new("badgz");
    write_valid(&dir.0);
    let raw = fs::read(dir.0.join(IMAGES)).unwrap();
    fs::write(dir.0.join(format!("{IMAGES}.gz")), raw).unwrap();
    let err = load_error(&dir.0);
    assert!(err.contains(&format!("{IMAGES}.gz")), "{err}");
}

/// The real files in data/mnist, checked against the counts their README publishes.
#[test]
fn real_mnist_has_its_published_label_counts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let count_labels = |split: &Split| {
        let mut counts = [0usize; 10];
        for &label in &split.labels {
            counts[label as usize] += 1;
        }
        counts
    };
    let mean_pixel = |split: &Split| {
        split.images.iter().map(|&p| p as f64).sum::<f64>() / (split.images.len() as f64 * 255.0)
    };
    let train = Split::train(&dir, None).unwrap();
    assert_eq!(train.images.len(), 60_000 * IMAGE_LEN);
    assert_eq!(
        count_labels(&train),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert!((mean_pixel(&train) - 0.1307).abs() < 5e-5);
    let test = Split::test(&dir, None).unwrap();
    assert_eq!(
        count_labels(&test),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert!((mean_pixel(&test) - 0.1325).abs() < 5e-5);
}
