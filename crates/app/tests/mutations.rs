//! Property tests: valid IDX files and checkpoints, mutated (truncated at every header offset, bit
//! flips, length fields edited, gzip streams corrupted), read to a clear error or a correct
//! result; never a panic, and never a large allocation sized by a corrupted header.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use app::mnist::{IdxFile, Split, IMAGE_LEN};
use flate2::write::GzEncoder;
use flate2::Compression;
use kernels::Device;
use nn::ConvNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Records the largest single allocation.
struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// No allocation in these tests needs more than this: the files are a few hundred KB.
const ALLOCATION_BOUND: usize = 16 << 20;

const IMAGES: usize = 3;

fn images_file() -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [2051u32, IMAGES as u32, 28, 28] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    bytes.extend((0..IMAGES * IMAGE_LEN).map(|i| (i * 7 % 251) as u8));
    bytes
}

fn labels_file() -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [2049u32, IMAGES as u32] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    bytes.extend([3, 1, 4]);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Uncompressed IDX bytes, gzip-compressed when `gz`.
fn file(plain: &[u8], gz: bool) -> Vec<u8> {
    if gz {
        gzip(plain)
    } else {
        plain.to_vec()
    }
}

/// Reads a pair of IDX files (possibly mutated; gzip when the flag says so) to an error naming a
/// file, or to exactly the records of `plain_images` and `plain_labels`, the uncompressed files.
fn check_idx(
    (images, images_gz): (Vec<u8>, bool),
    (labels, labels_gz): (Vec<u8>, bool),
    plain_images: &[u8],
    plain_labels: &[u8],
) {
    let read = Split::read(
        IdxFile::from_bytes(Path::new("images.idx"), images, images_gz),
        IdxFile::from_bytes(Path::new("labels.idx"), labels, labels_gz),
        None,
    );
    match read {
        Ok(split) => {
            assert_eq!(split.images, plain_images[16..]);
            assert_eq!(split.labels, plain_labels[8..]);
        }
        Err(err) => {
            let message = format!("{err:#}");
            assert!(
                message.contains("images.idx") || message.contains("labels.idx"),
                "{message}"
            );
        }
    }
    assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_BOUND);
}

/// Mutations of `file`, whose header is `header_len` bytes long.
fn mutations(file: &[u8], header_len: usize, rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // Truncated at every offset of the header, and a little past it.
    for len in 0..=header_len + 2 {
        out.push(file[..len].to_vec());
    }
    out.push(file[..file.len() - 1].to_vec());
    let mut longer = file.to_vec();
    longer.push(0);
    out.push(longer);
    // Every header field set to interesting values.
    for field in (0..header_len).step_by(4) {
        for value in [
            0u32,
            1,
            2,
            4,
            27,
            28,
            29,
            255,
            65_535,
            1_000_001,
            u32::MAX / 784,
            u32::MAX,
        ] {
            let mut edited = file.to_vec();
            edited[field..field + 4].copy_from_slice(&value.to_be_bytes());
            out.push(edited);
        }
    }
    // Random bit flips, most in the header.
    for i in 0..300 {
        let mut flipped = file.to_vec();
        let at = if i % 3 == 0 {
            rng.random_range(0..file.len())
        } else {
            rng.random_range(0..header_len)
        };
        flipped[at] ^= 1 << rng.random_range(0..8);
        out.push(flipped);
    }
    out
}

#[test]
fn mutated_idx_files_are_refused_or_read_right() {
    let mut rng = StdRng::seed_from_u64(1);
    let (images, labels) = (images_file(), labels_file());
    for gz in [false, true] {
        for mutated in mutations(&images, 16, &mut rng) {
            let pair = ((file(&mutated, gz), gz), (labels.clone(), false));
            check_idx(pair.0, pair.1, &mutated, &labels);
        }
        for mutated in mutations(&labels, 8, &mut rng) {
            let pair = ((images.clone(), false), (file(&mutated, gz), gz));
            check_idx(pair.0, pair.1, &images, &mutated);
        }
    }
}

#[test]
fn corrupted_gzip_streams_are_refused() {
    let mut rng = StdRng::seed_from_u64(2);
    let plain = images_file();
    let images = gzip(&plain);
    let labels = labels_file();
    // Truncated anywhere, and the CRC and length trailer (the last 8 bytes) flipped bit by bit.
    for len in 0..images.len() {
        let pair = ((images[..len].to_vec(), true), (labels.clone(), false));
        check_idx(pair.0, pair.1, &plain, &labels);
    }
    let trailer = images.len() - 8;
    for at in trailer..images.len() {
        for bit in 0..8 {
            let mut bad = images.clone();
            bad[at] ^= 1 << bit;
            let read = Split::read(
                IdxFile::from_bytes(Path::new("images.idx"), bad, true),
                IdxFile::from_bytes(Path::new("labels.idx"), labels.clone(), false),
                None,
            );
            assert!(
                read.is_err(),
                "a flipped trailer bit {at}:{bit} was accepted"
            );
        }
    }
    // Flips anywhere in the stream.
    for _ in 0..500 {
        let mut bad = images.clone();
        let at = rng.random_range(0..bad.len());
        bad[at] ^= 1 << rng.random_range(0..8);
        // Passing the CRC, the stream is the original one.
        check_idx((bad, true), (labels.clone(), false), &plain, &labels);
    }
}

/// A header claiming 4 billion images in a small gzip file is refused without reading it.
#[test]
fn a_header_claiming_billions_of_images_is_refused() {
    let mut images = images_file();
    images[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut labels = labels_file();
    labels[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    for gz in [false, true] {
        let wrap = |b: &Vec<u8>| if gz { gzip(b) } else { b.clone() };
        let err = Split::read(
            IdxFile::from_bytes(Path::new("images.idx"), wrap(&images), gz),
            IdxFile::from_bytes(Path::new("labels.idx"), wrap(&labels), gz),
            None,
        )
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("images.idx"), "{message}");
        assert!(message.contains("4294967295"), "{message}");
    }
    assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_BOUND);
}

fn checkpoint() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nn/tests/fixtures/pytorch_checkpoint.safetensors");
    std::fs::read(path).unwrap()
}

fn check_checkpoint(bytes: &[u8], original: &[Vec<f32>]) {
    let path = Path::new("mutated.safetensors");
    match ConvNet::load_bytes(&Device::Cpu, bytes, path) {
        Ok(net) => {
            // Flips in the JSON's padding or in the metadata may pass; then the weights are the
            // original ones, or differ only where the flipped data bytes were, and are finite.
            let weights: Vec<Vec<f32>> = net
                .params()
                .iter()
                .map(|p| p.value.to_vec(&Device::Cpu).unwrap())
                .collect();
            assert_eq!(weights.len(), original.len());
            for (w, o) in weights.iter().zip(original) {
                assert_eq!(w.len(), o.len());
                assert!(w.iter().all(|v| v.is_finite()));
            }
        }
        Err(err) => assert!(err.to_string().contains("mutated.safetensors"), "{err}"),
    }
    assert!(LARGEST.load(Ordering::Relaxed) <= ALLOCATION_BOUND);
}

#[test]
fn mutated_checkpoints_are_refused_or_read_right() {
    let mut rng = StdRng::seed_from_u64(3);
    let good = checkpoint();
    let net = ConvNet::load_bytes(&Device::Cpu, &good, Path::new("good")).unwrap();
    let original: Vec<Vec<f32>> = net
        .params()
        .iter()
        .map(|p| p.value.to_vec(&Device::Cpu).unwrap())
        .collect();
    let header_len = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    // Truncated at every offset of the header.
    for len in 0..=header_len {
        check_checkpoint(&good[..len], &original);
    }
    // The header's length field edited.
    for value in [
        0u64,
        1,
        7,
        8,
        header_len as u64 - 9,
        header_len as u64 - 7,
        good.len() as u64,
        u64::MAX / 2,
        u64::MAX,
    ] {
        let mut edited = good.clone();
        edited[..8].copy_from_slice(&value.to_le_bytes());
        check_checkpoint(&edited, &original);
    }
    // Digits of the JSON header (shapes and offsets) changed, one at a time.
    let digits: Vec<usize> = (8..header_len)
        .filter(|&i| good[i].is_ascii_digit())
        .collect();
    for _ in 0..600 {
        let mut edited = good.clone();
        let at = digits[rng.random_range(0..digits.len())];
        edited[at] = b"0123456789"[rng.random_range(0..10)];
        check_checkpoint(&edited, &original);
    }
    // Random bit flips, most in the header.
    for i in 0..600 {
        let mut flipped = good.clone();
        let at = if i % 4 == 0 {
            rng.random_range(0..good.len())
        } else {
            rng.random_range(0..header_len)
        };
        flipped[at] ^= 1 << rng.random_range(0..8);
        check_checkpoint(&flipped, &original);
    }
}
