//! Property tests: valid IDX files and checkpoints, mutated (truncated at every header offset, bit
//! flips, length fields edited, gzip streams corrupted), read to a clear error or a correct
//! result; never a panic, and never a large allocation sized by a corrupted header. Training
//! states with a field edited out of range are refused by name and never rewritten.

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

/// A training state's header, edited in place of the file's: the tensors after it are copied
/// as they are (streamed, so that no allocation here is sized by the state).
struct StateFile {
    header: String,
    path: std::path::PathBuf,
}

impl StateFile {
    fn read(path: &Path) -> StateFile {
        let mut file = std::fs::File::open(path).unwrap();
        let mut len = [0; 8];
        std::io::Read::read_exact(&mut file, &mut len).unwrap();
        let mut header = vec![0; u64::from_le_bytes(len) as usize];
        std::io::Read::read_exact(&mut file, &mut header).unwrap();
        StateFile {
            header: String::from_utf8(header).unwrap(),
            path: path.to_path_buf(),
        }
    }

    /// Metadata `key` set to `value` (JSON-escaped already).
    fn set(&mut self, key: &str, value: &str) {
        let start = self.header.find(&format!("\"{key}\":\"")).unwrap() + key.len() + 4;
        let end = start + self.header[start..].find('"').unwrap();
        self.header.replace_range(start..end, value);
    }

    /// Where tensor `name`'s data begins, from the start of the data.
    fn offset(&self, name: &str) -> u64 {
        let at = self.header.find(&format!("\"{name}\":{{")).unwrap();
        let offsets = at + self.header[at..].find("\"data_offsets\":[").unwrap() + 16;
        let end = offsets + self.header[offsets..].find(',').unwrap();
        self.header[offsets..end].parse().unwrap()
    }

    /// Writes the edited header and the original tensors to `to`, then `values` over the first
    /// values of each named tensor.
    fn write(&self, to: &Path, values: &[(&str, f32)]) {
        let mut header = self.header.clone().into_bytes();
        while !header.len().is_multiple_of(8) {
            header.push(b' ');
        }
        let mut original = std::fs::File::open(&self.path).unwrap();
        let mut len = [0; 8];
        std::io::Read::read_exact(&mut original, &mut len).unwrap();
        std::io::copy(
            &mut std::io::Read::take(&mut original, u64::from_le_bytes(len)),
            &mut std::io::sink(),
        )
        .unwrap();
        let mut out = std::fs::File::create(to).unwrap();
        out.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        out.write_all(&header).unwrap();
        let data_start = 8 + header.len() as u64;
        std::io::copy(&mut original, &mut out).unwrap();
        for (name, value) in values {
            let at = data_start + self.offset(name);
            std::os::unix::fs::FileExt::write_all_at(&out, &value.to_le_bytes(), at).unwrap();
        }
    }
}

/// The SHA-256 of a file, streamed.
fn file_sha256(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hash).unwrap();
    hash.finalize().to_vec()
}

fn handwritten(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_handwritten"))
        .args(args)
        .output()
        .unwrap()
}

/// Each field of a training state edited out of range is refused by `train --resume`, naming the
/// state's file, the field and what it expected, and the state is left as it was. An option's
/// field is refused with the words its flag is.
#[test]
fn training_states_with_a_field_out_of_range_are_refused_and_kept() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mutations-states");
    let _ = std::fs::remove_dir_all(&root);
    let run = root.join("run");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    // One epoch of one batch of 32 images: adam_steps 1.
    let trained = handwritten(&[
        "train",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
        "--train-limit",
        "32",
        "--test-limit",
        "10",
    ]);
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let state = StateFile::read(&run.join("training_state.safetensors"));
    let metrics = |row: &str| format!("{}\\n{row}\\n", app::metrics::CSV_HEADER);
    let whole = "expected a whole number of at least 1";
    let epochs = "expected a whole number from 1 to at most 1000000";
    let cases: Vec<(&str, String, &str)> = vec![
        ("epochs", "0".into(), epochs),
        ("epochs", "99999999".into(), epochs),
        ("batch_size", "0".into(), whole),
        ("lr", "-1".into(), "expected a positive number"),
        ("lr", "0".into(), "expected a positive number"),
        ("lr", "NaN".into(), "expected a positive number"),
        ("seed", "-1".into(), "expected a whole number from 0 to"),
        (
            "device",
            "gpu".into(),
            "expected one of cpu, cuda, emulated, auto",
        ),
        ("precision", "fp16".into(), "expected tf32 or fp32"),
        ("train_limit", "0".into(), whole),
        ("test_limit", "0".into(), whole),
        ("data", "".into(), "expected a directory"),
        ("epoch", "2".into(), "expected a whole number from 0 to 1"),
        ("adam_steps", "0".into(), "expected at least 1"),
        (
            "adam_steps",
            "3".into(),
            "expected 1, the steps of 1 epochs",
        ),
        ("rng_word_pos", "-1".into(), "expected a whole number"),
        ("train_sha256", "abc".into(), "expected a SHA-256"),
        ("test_sha256", "".into(), "expected a SHA-256"),
        (
            "metrics",
            metrics("1,NaN,0.5,0.5,0.5,1.0,10.0"),
            "train_loss is NaN",
        ),
        (
            "metrics",
            metrics("1,0.5,1.5,0.5,0.5,1.0,10.0"),
            "train_acc is 1.5",
        ),
        (
            "metrics",
            metrics("1,0.5,0.5,-1,0.5,1.0,10.0"),
            "test_loss is -1",
        ),
        (
            "metrics",
            metrics("1,0.5,0.5,0.5,0.5,inf,10.0"),
            "seconds is inf",
        ),
        (
            "metrics",
            metrics("2,0.5,0.5,0.5,0.5,1.0,10.0"),
            "expected one for each epoch",
        ),
    ];
    let tensors = [
        (
            "adam.v.conv2d.0.bias",
            -1.0,
            "tensor adam.v.conv2d.0.bias holds -1 at index 0",
        ),
        (
            "adam.m.conv2d.0.bias",
            f32::NAN,
            "tensor adam.m.conv2d.0.bias holds NaN",
        ),
        (
            "model.conv2d.0.bias",
            f32::INFINITY,
            "tensor model.conv2d.0.bias holds inf",
        ),
    ];
    let cases = cases
        .iter()
        .map(|(key, value, says)| (Some((*key, value.as_str())), None, *says))
        .chain(
            tensors
                .iter()
                .map(|(name, v, says)| (None, Some((*name, *v)), *says)),
        );
    for (n, (field, tensor, says)) in cases.enumerate() {
        let dir = root.join(format!("case-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("training_state.safetensors");
        let mut edited = StateFile::read(&state.path);
        if let Some((key, value)) = field {
            edited.set(key, value);
        }
        edited.write(&path, tensor.as_slice());
        let before = file_sha256(&path);
        let output = handwritten(&["train", "--resume", dir.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{field:?} {tensor:?}: {err}");
        let named = match field {
            Some(("metrics", _)) => format!("{}: field metrics", path.display()),
            Some((key, value)) => format!("{}: field {key} is \"{value}\"", path.display()),
            None => format!("{}: tensor", path.display()),
        };
        assert!(
            err.contains(&named) && err.contains(says),
            "{field:?} {tensor:?}: {err}"
        );
        assert!(
            file_sha256(&path) == before,
            "{field:?} {tensor:?}: the state was rewritten"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // The editor itself breaks nothing: a value in range resumes (the run is complete).
    let dir = root.join("in-range");
    std::fs::create_dir_all(&dir).unwrap();
    let mut edited = StateFile::read(&state.path);
    edited.set("lr", "0.002");
    edited.write(
        &dir.join("training_state.safetensors"),
        &[("adam.v.conv2d.0.bias", 0.5)],
    );
    let output = handwritten(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The flags say what the state's fields say.
    for (flag, value, says) in [
        ("--epochs", "0", epochs),
        ("--lr", "-1", "expected a positive number"),
        ("--train-limit", "0", whole),
        (
            "--device",
            "gpu",
            "expected one of cpu, cuda, emulated, auto",
        ),
    ] {
        let output = handwritten(&["train", &format!("{flag}={value}")]);
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && err.contains(says),
            "{flag}: {err}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
