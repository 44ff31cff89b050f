//! `handwritten predict`: one's own images, prepared as MNIST prepared its digits, through a
//! checkpoint.
//!
//! MNIST's digits were NIST's black-and-white scans, each digit's bounding box scaled with
//! anti-aliasing into 20x20 keeping its aspect ratio, then placed in 28x28 with its centre of mass
//! at the centre: white ink (255) on black (0). [`prepare_image`] does the same to a photo or a
//! drawing, in steps that each have a function below:
//!
//! 1. [`brightness`]: luminance in [0, 1], transparent pixels on white; images over
//!    [`WORK_SIDE`] pixels are averaged down first (the digit ends at 20x20 anyway).
//! 2. [`Paper::fit`]: the paper's brightness across the page, a smooth surface fitted to the
//!    pixels that are not ink and corrected cell by cell, so that a gradient of light or a soft
//!    shadow is not ink; which side of it the ink lies on gives the polarity (dark ink on light
//!    paper or the reverse).
//! 3. [`ink_coverage`]: how far each pixel is from the paper towards the ink, relative to the
//!    paper's own brightness (so a shadow dims paper and ink alike), and the threshold between
//!    ink and paper chosen from the image by Otsu's method.
//! 4. [`digit_box`]: the bounding box of the ink, leaving out specks far smaller than the digit.
//! 5. [`resample`]: the box scaled into 20x20 by averaging the area each output pixel covers (the
//!    anti-aliasing), then placed in 28x28 by its centre of mass.
//!
//! An image in which no digit is found (see [`NoDigit`]) is refused rather than guessed at.

use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::Path;

use image::error::LimitErrorKind;
use image::io::{Limits, Reader};
use image::{DynamicImage, GenericImageView, ImageError, ImageFormat};

use crate::mnist::{CLASSES, IMAGE_LEN, IMAGE_SIDE};

/// The digit's box inside the 28x28 image, as in MNIST.
const DIGIT_BOX: usize = 20;
/// The longest image side read.
pub const MAX_SIDE: u32 = 16_384;
/// The most pixels an image may have: bounds the decoded image's memory.
pub const MAX_PIXELS: u64 = 40_000_000;
/// The largest file read.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// The most memory a decoder may allocate.
pub const MAX_DECODER_BYTES: u64 = 512 << 20;
/// Images larger than this on a side are averaged down to it before preparation.
pub const WORK_SIDE: usize = 1024;
/// The least difference between ink and paper, on a [0, 1] brightness scale (26 of 255 levels).
pub const MIN_CONTRAST: f32 = 0.1;
/// The shortest the ink's box may be on its longer side, in pixels of the working image.
pub const MIN_BOX_SIDE: usize = 8;
/// ... and as a fraction of the working image's longer side.
pub const MIN_BOX_FRACTION: usize = 32;
/// The least ink a prepared digit holds, in fully inked pixels (MNIST's faintest training digit
/// holds 19.9).
pub const MIN_INK: f32 = 15.0;

/// Why an image cannot be predicted.
#[derive(Debug)]
pub enum ImageProblem {
    /// The file could not be read.
    Unreadable(io::Error),
    /// The file or its image is over one of predict's limits.
    TooLarge(Limit),
    /// The data ends before the image does.
    Truncated { format: &'static str },
    /// Not a format predict reads, or a kind of it that its decoder does not support.
    UnsupportedFormat {
        format: Option<&'static str>,
        detail: Option<String>,
    },
    /// A format predict reads, but the data is not valid.
    Malformed {
        format: &'static str,
        detail: String,
    },
    /// The image was read but holds nothing that can be taken for a digit.
    NoDigit(NoDigit),
}

/// The limit an image is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    FileBytes(u64),
    Side { width: u32, height: u32 },
    Pixels { width: u32, height: u32 },
    DecoderMemory,
}

/// Why no digit was found.
#[derive(Debug, Clone, PartialEq)]
pub enum NoDigit {
    /// Every pixel has the same brightness.
    Blank,
    /// The ink differs from the paper by less than [`MIN_CONTRAST`].
    TooFaint { contrast: f32 },
    /// The ink's box is shorter than [`MIN_BOX_SIDE`] or 1/[`MIN_BOX_FRACTION`] of the image.
    TooSmall { side: usize, least: usize },
    /// Scaled into the 20x20 box, the ink covers less than [`MIN_INK`] pixels.
    TooThin { ink: f32 },
}

impl fmt::Display for ImageProblem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Unreadable(err) => write!(f, "cannot read the file: {err}"),
            Self::TooLarge(Limit::FileBytes(bytes)) => write!(
                f,
                "the file is too large: {bytes} bytes, files over {MAX_FILE_BYTES} bytes \
                 (256 MiB) are refused"
            ),
            Self::TooLarge(Limit::Side { width, height }) => write!(
                f,
                "the image is too large: {width}x{height} pixels, sides over {MAX_SIDE} pixels \
                 are refused"
            ),
            Self::TooLarge(Limit::Pixels { width, height }) => write!(
                f,
                "the image is too large: {width}x{height} pixels, images over {MAX_PIXELS} \
                 pixels are refused"
            ),
            Self::TooLarge(Limit::DecoderMemory) => write!(
                f,
                "the image is too large: decoding it needs more than {MAX_DECODER_BYTES} bytes \
                 (512 MiB)"
            ),
            Self::Truncated { format } => {
                write!(f, "the {format} data ends early: the file is truncated")
            }
            Self::UnsupportedFormat {
                format: None,
                detail: _,
            } => write!(
                f,
                "unsupported format: not a PNG, JPEG, BMP or PGM/PPM image (its first bytes \
                 match none of them)"
            ),
            Self::UnsupportedFormat {
                format: Some(format),
                detail: None,
            } => write!(
                f,
                "unsupported format: a {format} image; predict reads PNG, JPEG, BMP and PGM/PPM"
            ),
            Self::UnsupportedFormat {
                format: Some(format),
                detail: Some(detail),
            } => write!(f, "unsupported {format} image: {detail}"),
            Self::Malformed { format, detail } => write!(f, "malformed {format} data: {detail}"),
            Self::NoDigit(why) => write!(f, "no digit found: {why}"),
        }
    }
}

impl fmt::Display for NoDigit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Blank => write!(f, "the image is blank"),
            Self::TooFaint { contrast } => write!(
                f,
                "the ink is too faint: it differs from the paper by {:.0} of 255 levels, the \
                 least is {:.0}",
                contrast * 255.0,
                MIN_CONTRAST * 255.0
            ),
            Self::TooSmall { side, least } => write!(
                f,
                "the ink is too small: {side} pixel{} across, the least is {least}",
                if *side == 1 { "" } else { "s" }
            ),
            Self::TooThin { ink } => write!(
                f,
                "the ink is too thin: scaled to MNIST's 20x20 box it covers {ink:.1} pixels, the \
                 least is {MIN_INK}"
            ),
        }
    }
}

impl std::error::Error for ImageProblem {}

/// The image file at `path` (PNG, JPEG, BMP or PGM/PPM), as 28x28 MNIST-style pixels.
pub fn prepare_file(path: &Path) -> Result<[u8; IMAGE_LEN], ImageProblem> {
    let mut file = File::open(path).map_err(ImageProblem::Unreadable)?;
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ImageProblem::Unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let size = file.metadata().map_or(bytes.len() as u64, |m| m.len());
        return Err(ImageProblem::TooLarge(Limit::FileBytes(size)));
    }
    prepare_bytes(&bytes)
}

/// An image file's bytes (PNG, JPEG, BMP or PGM/PPM), as 28x28 MNIST-style pixels.
pub fn prepare_bytes(bytes: &[u8]) -> Result<[u8; IMAGE_LEN], ImageProblem> {
    prepare_image(&decode(bytes)?)
}

/// Decodes an image within predict's limits.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, ImageProblem> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ImageProblem::TooLarge(Limit::FileBytes(bytes.len() as u64)));
    }
    let reader = || {
        Reader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(ImageProblem::Unreadable)
    };
    let format = reader()?.format().ok_or(ImageProblem::UnsupportedFormat {
        format: None,
        detail: None,
    })?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Bmp | ImageFormat::Pnm
    ) {
        return Err(ImageProblem::UnsupportedFormat {
            format: Some(format_name(format)),
            detail: None,
        });
    }
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|err| decode_problem(err, format, bytes, None))?;
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(ImageProblem::TooLarge(Limit::Side { width, height }));
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageProblem::TooLarge(Limit::Pixels { width, height }));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODER_BYTES);
    let mut reader = reader()?;
    reader.limits(limits);
    reader
        .decode()
        .map_err(|err| decode_problem(err, format, bytes, Some((width, height))))
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Tga => "TGA",
        ImageFormat::Ico => "ICO",
        ImageFormat::Hdr => "HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Qoi => "QOI",
        ImageFormat::Farbfeld => "farbfeld",
        ImageFormat::Dds => "DDS",
        _ => "other",
    }
}

/// What went wrong in a decoder, told apart: a file cut short fails in many ways inside a
/// decoder, so the end of the data is checked too.
fn decode_problem(
    err: ImageError,
    format: ImageFormat,
    bytes: &[u8],
    size: Option<(u32, u32)>,
) -> ImageProblem {
    let format_name = format_name(format);
    match err {
        ImageError::Limits(limit) => match limit.kind() {
            LimitErrorKind::InsufficientMemory => ImageProblem::TooLarge(Limit::DecoderMemory),
            _ => ImageProblem::Malformed {
                format: format_name,
                detail: limit.to_string(),
            },
        },
        ImageError::IoError(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
            ImageProblem::Truncated {
                format: format_name,
            }
        }
        _ if ends_early(format, bytes, size) => ImageProblem::Truncated {
            format: format_name,
        },
        ImageError::Unsupported(err) => ImageProblem::UnsupportedFormat {
            format: Some(format_name),
            detail: Some(err.to_string()),
        },
        err => ImageProblem::Malformed {
            format: format_name,
            detail: err.to_string(),
        },
    }
}

/// Whether `bytes` stop before their format's end: a PNG ends with its IEND chunk, a JPEG with
/// its end-of-image marker, a BMP's header gives its file's size, and a binary PGM or PPM of
/// `size` holds at least a byte per sample.
fn ends_early(format: ImageFormat, bytes: &[u8], size: Option<(u32, u32)>) -> bool {
    const PNG_END: [u8; 8] = [b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
    match format {
        ImageFormat::Png => !bytes.ends_with(&PNG_END),
        ImageFormat::Jpeg => !bytes.ends_with(&[0xFF, 0xD9]),
        ImageFormat::Bmp => bytes.get(2..6).is_some_and(|size| {
            u32::from_le_bytes(size.try_into().unwrap()) as usize > bytes.len()
        }),
        ImageFormat::Pnm => {
            let samples_per_pixel = match bytes.get(..2) {
                Some(b"P5") => 1,
                Some(b"P6") => 3,
                _ => return false,
            };
            size.is_some_and(|(w, h)| {
                (bytes.len() as u64) < u64::from(w) * u64::from(h) * samples_per_pixel
            })
        }
        _ => false,
    }
}

/// MNIST's preparation of an image of one digit (the steps in this module's documentation).
pub fn prepare_image(image: &DynamicImage) -> Result<[u8; IMAGE_LEN], ImageProblem> {
    if image.width() == 0 || image.height() == 0 {
        return Err(ImageProblem::NoDigit(NoDigit::Blank));
    }
    let page = brightness(image);
    let paper = Paper::fit(&page).ok_or(ImageProblem::NoDigit(NoDigit::Blank))?;
    let ink = ink_coverage(&page, &paper).map_err(ImageProblem::NoDigit)?;
    let digit = digit_box(&ink).map_err(ImageProblem::NoDigit)?;
    resample(&ink, &digit).map_err(ImageProblem::NoDigit)
}

/// A grey image in [0, 1], row by row.
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl Plane {
    fn at(&self, x: usize, y: usize) -> f32 {
        self.values[y * self.width + x]
    }
}

/// Step 1: each pixel's luminance (ITU-R BT.601, as JPEG's) in [0, 1], transparent pixels on
/// white paper; an image over [`WORK_SIDE`] pixels on a side is averaged down by a whole factor.
pub fn brightness(image: &DynamicImage) -> Plane {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let factor = width.max(height).div_ceil(WORK_SIDE).max(1);
    let (w, h) = (width.div_ceil(factor), height.div_ceil(factor));
    let mut sums = vec![0.0f32; w * h];
    let mut add = |x: u32, y: u32, luma: f32| {
        sums[(y as usize / factor) * w + x as usize / factor] += luma;
    };
    let rgb_luma = |r: u8, g: u8, b: u8| {
        (0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)) / 255.0
    };
    match image {
        DynamicImage::ImageLuma8(gray) => {
            for (x, y, p) in gray.enumerate_pixels() {
                add(x, y, f32::from(p.0[0]) / 255.0);
            }
        }
        DynamicImage::ImageRgb8(rgb) => {
            for (x, y, p) in rgb.enumerate_pixels() {
                let [r, g, b] = p.0;
                add(x, y, rgb_luma(r, g, b));
            }
        }
        DynamicImage::ImageRgba8(rgba) => {
            for (x, y, p) in rgba.enumerate_pixels() {
                let [r, g, b, a] = p.0;
                let alpha = f32::from(a) / 255.0;
                add(x, y, alpha * rgb_luma(r, g, b) + (1.0 - alpha));
            }
        }
        // 16-bit and float images, converted pixel by pixel rather than copied whole.
        other => {
            for (x, y, p) in other.pixels() {
                let [r, g, b, a] = p.0;
                let alpha = f32::from(a) / 255.0;
                add(x, y, alpha * rgb_luma(r, g, b) + (1.0 - alpha));
            }
        }
    }
    // Cells on the right and bottom edges may hold fewer pixels.
    for (i, sum) in sums.iter_mut().enumerate() {
        let (cx, cy) = (i % w, i / w);
        let cell_w = (width - cx * factor).min(factor);
        let cell_h = (height - cy * factor).min(factor);
        *sum /= (cell_w * cell_h) as f32;
    }
    Plane {
        width: w,
        height: h,
        values: sums,
    }
}

/// Step 2: the paper's brightness at each point, `a + b·u + c·v + d·u² + e·uv + f·v²` in the
/// page's coordinates `u, v` in [-1/2, 1/2], and which way the ink differs from it.
pub struct Paper {
    coefficients: [f64; 6],
    width: usize,
    height: usize,
    /// Whether the ink is darker than the paper (as pen on paper) or lighter (as MNIST's).
    pub dark_ink: bool,
    /// What the surface misses, as a shadow's edge: on a grid of `cells` x `cells`, the median
    /// difference between the paper pixels of each cell and the surface, interpolated between
    /// the cells' centres.
    corrections: Vec<f32>,
    cells: usize,
}

impl Paper {
    /// How many times the surface is fitted, each time to the pixels the last fit took for paper.
    const FITS: usize = 4;
    /// The most sample points per side.
    const SAMPLES: usize = 128;
    /// The most correction cells per side, and the fewest pixels per cell side: a cell is wider
    /// than a stroke.
    const CELLS: usize = 12;
    const CELL_PIXELS: usize = 16;

    /// Fits the surface to the page by least squares, then again to the pixels Otsu's threshold
    /// on the differences puts on the side of the majority (a digit is mostly paper); `None` for a
    /// page the surface fits exactly (one brightness, or light falling off smoothly, and no ink).
    pub fn fit(page: &Plane) -> Option<Paper> {
        let stride = page.width.max(page.height).div_ceil(Self::SAMPLES).max(1);
        let samples: Vec<(usize, usize, f32)> = (0..page.height)
            .step_by(stride)
            .flat_map(|y| (0..page.width).step_by(stride).map(move |x| (x, y)))
            .map(|(x, y)| (x, y, page.at(x, y)))
            .collect();
        let mut paper = Paper {
            coefficients: [0.0; 6],
            width: page.width,
            height: page.height,
            dark_ink: true,
            corrections: vec![0.0],
            cells: 1,
        };
        let mut is_paper = vec![true; samples.len()];
        for _ in 0..Self::FITS {
            paper.coefficients = fit_quadratic(&paper, &samples, &is_paper);
            let residuals: Vec<f32> = samples
                .iter()
                .map(|&(x, y, v)| v - paper.surface(x, y))
                .collect();
            let threshold = otsu(&residuals)?;
            let above = residuals.iter().filter(|&&r| r > threshold).count();
            // Paper is the larger side; ink is dark when the paper lies above the threshold.
            paper.dark_ink = above * 2 >= residuals.len();
            for (p, &r) in is_paper.iter_mut().zip(&residuals) {
                *p = (r > threshold) == paper.dark_ink;
            }
        }
        paper.correct(&samples, &is_paper);
        Some(paper)
    }

    /// Sets the corrections from the paper samples; a cell with less than half its samples paper
    /// (on a thick stroke) takes its neighbours'.
    fn correct(&mut self, samples: &[(usize, usize, f32)], is_paper: &[bool]) {
        let cells = (self.width.max(self.height) / Self::CELL_PIXELS).clamp(1, Self::CELLS);
        let mut residuals = vec![Vec::new(); cells * cells];
        let mut counts = vec![0usize; cells * cells];
        for (&(x, y, v), &paper) in samples.iter().zip(is_paper) {
            let cell = (y * cells / self.height) * cells + x * cells / self.width;
            counts[cell] += 1;
            if paper {
                residuals[cell].push(v - self.surface(x, y));
            }
        }
        let mut corrections: Vec<Option<f32>> = residuals
            .iter_mut()
            .zip(&counts)
            .map(|(r, &count)| if r.len() * 2 > count { median(r) } else { None })
            .collect();
        // Cells without enough paper take the mean of their neighbours that have it, outwards.
        while corrections.iter().any(Option::is_none) {
            let known = corrections.clone();
            let mut filled = false;
            for (i, correction) in corrections.iter_mut().enumerate() {
                if correction.is_some() {
                    continue;
                }
                let (cx, cy) = (i % cells, i / cells);
                let neighbours: Vec<f32> = [(0, -1), (0, 1), (-1, 0), (1, 0)]
                    .iter()
                    .filter_map(|&(dx, dy)| {
                        let (nx, ny) = (cx as i64 + dx, cy as i64 + dy);
                        let inside =
                            (0..cells as i64).contains(&nx) && (0..cells as i64).contains(&ny);
                        inside
                            .then(|| known[ny as usize * cells + nx as usize])
                            .flatten()
                    })
                    .collect();
                if !neighbours.is_empty() {
                    *correction = Some(neighbours.iter().sum::<f32>() / neighbours.len() as f32);
                    filled = true;
                }
            }
            if !filled {
                break;
            }
        }
        self.corrections = corrections.iter().map(|c| c.unwrap_or(0.0)).collect();
        self.cells = cells;
    }

    /// The correction at pixel `(x, y)`, bilinear between the cells' centres.
    fn correction(&self, x: usize, y: usize) -> f32 {
        let n = self.cells;
        let axis = |p: usize, len: usize| {
            let at = ((p as f32 + 0.5) / len as f32 * n as f32 - 0.5).clamp(0.0, (n - 1) as f32);
            let low = (at as usize).min(n.saturating_sub(2));
            let high = (low + 1).min(n - 1);
            (low, high, at - low as f32)
        };
        let ((x0, x1, fx), (y0, y1, fy)) = (axis(x, self.width), axis(y, self.height));
        let c = |cx: usize, cy: usize| self.corrections[cy * n + cx];
        let top = c(x0, y0) * (1.0 - fx) + c(x1, y0) * fx;
        let bottom = c(x0, y1) * (1.0 - fx) + c(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    fn terms(&self, x: usize, y: usize) -> [f64; 6] {
        let u = (x as f64 + 0.5) / self.width as f64 - 0.5;
        let v = (y as f64 + 0.5) / self.height as f64 - 0.5;
        [1.0, u, v, u * u, u * v, v * v]
    }

    /// The paper's brightness at pixel `(x, y)`.
    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.surface(x, y) + self.correction(x, y)
    }

    /// The fitted surface alone.
    fn surface(&self, x: usize, y: usize) -> f32 {
        let terms = self.terms(x, y);
        terms
            .iter()
            .zip(&self.coefficients)
            .map(|(t, c)| t * c)
            .sum::<f64>() as f32
    }
}

/// The least-squares quadratic through the samples marked in `use_sample`, by its normal
/// equations; a small ridge keeps them solvable on a one-pixel-wide page.
fn fit_quadratic(paper: &Paper, samples: &[(usize, usize, f32)], use_sample: &[bool]) -> [f64; 6] {
    let mut a = [[0.0f64; 7]; 6];
    for (&(x, y, v), _) in samples.iter().zip(use_sample).filter(|(_, &u)| u) {
        let t = paper.terms(x, y);
        for i in 0..6 {
            for j in 0..6 {
                a[i][j] += t[i] * t[j];
            }
            a[i][6] += t[i] * f64::from(v);
        }
    }
    let n = a[0][0].max(1.0);
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += 1e-9 * n;
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..6 {
        let pivot = (col..6)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        for row in 0..6 {
            if row != col && a[col][col] != 0.0 {
                let factor = a[row][col] / a[col][col];
                let pivot_row = a[col];
                for (value, &p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                    *value -= factor * p;
                }
            }
        }
    }
    std::array::from_fn(|i| {
        if a[i][i] != 0.0 {
            a[i][6] / a[i][i]
        } else {
            0.0
        }
    })
}

/// Otsu's threshold: the value that splits `values` into the two classes of most different means
/// for their sizes (the largest between-class variance), over a 256-bin histogram. Values above it
/// are one class. `None` when all are equal.
fn otsu(values: &[f32]) -> Option<f32> {
    const BINS: usize = 256;
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if hi - lo <= 1e-6 {
        return None;
    }
    let bin_of = |v: f32| (((v - lo) / (hi - lo) * BINS as f32) as usize).min(BINS - 1);
    let mut histogram = [0u64; BINS];
    for &v in values {
        histogram[bin_of(v)] += 1;
    }
    let total = values.len() as f64;
    let weighted_total: f64 = (0..BINS).map(|i| i as f64 * histogram[i] as f64).sum();
    let (mut below, mut below_weighted) = (0.0, 0.0);
    // Between two clusters every threshold in the gap is equally good: take the gap's middle.
    let (mut best, mut first_best, mut last_best) = (-1.0, 0, 0);
    for (i, &count) in histogram.iter().enumerate().take(BINS - 1) {
        below += count as f64;
        below_weighted += i as f64 * count as f64;
        let above = total - below;
        if below == 0.0 || above == 0.0 {
            continue;
        }
        let mean_gap = below_weighted / below - (weighted_total - below_weighted) / above;
        let between = below * above * mean_gap * mean_gap;
        if between > best * (1.0 + 1e-9) {
            (best, first_best, last_best) = (between, i, i);
        } else if between >= best * (1.0 - 1e-9) {
            last_best = i;
        }
    }
    let bin = (first_best + last_best) as f32 / 2.0 + 1.0;
    Some(lo + bin * (hi - lo) / BINS as f32)
}

/// Step 3's result: each pixel's ink coverage in [0, 1] and which pixels are ink.
pub struct Ink {
    /// 0 for paper, 1 for the ink's typical (median) darkness, in between on edges and blur.
    pub coverage: Plane,
    /// Pixels darker than Otsu's threshold between paper and ink (lighter, for light ink).
    pub is_ink: Vec<bool>,
}

/// Step 3: how far each pixel lies from the paper towards the ink, as a fraction of the paper's
/// brightness (of its darkness, for light ink), so that a shadow, which dims paper and ink in
/// proportion, leaves it unchanged; Otsu's threshold on it tells ink from paper. The typical ink
/// maps to 1 and the paper, with its noise, to 0: MNIST's 255 and 0.
pub fn ink_coverage(page: &Plane, paper: &Paper) -> Result<Ink, NoDigit> {
    let (w, h) = (page.width, page.height);
    let mut darkness = Vec::with_capacity(w * h);
    let mut contrast = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let (v, p) = (page.at(x, y), paper.at(x, y).clamp(0.0, 1.0));
            // Light ink on dark paper is dark ink on light paper, inverted.
            let (v, p) = if paper.dark_ink {
                (v, p)
            } else {
                (1.0 - v, 1.0 - p)
            };
            contrast.push(p - v);
            darkness.push(((p - v) / p.max(0.02)).clamp(0.0, 1.0));
        }
    }
    let threshold = otsu(&darkness).ok_or(NoDigit::Blank)?;
    let is_ink: Vec<bool> = darkness.iter().map(|&d| d > threshold).collect();
    let ink_of = |values: &[f32]| {
        let mut ink: Vec<f32> = values
            .iter()
            .zip(&is_ink)
            .filter(|(_, &i)| i)
            .map(|(&v, _)| v)
            .collect();
        median(&mut ink)
    };
    let typical_contrast = ink_of(&contrast).ok_or(NoDigit::Blank)?;
    if typical_contrast < MIN_CONTRAST {
        return Err(NoDigit::TooFaint {
            contrast: typical_contrast,
        });
    }
    let full = ink_of(&darkness).ok_or(NoDigit::Blank)?;
    // Below half the threshold is paper: its noise and a JPEG's ringing stay out of the digit.
    let floor = threshold / 2.0;
    let coverage = darkness
        .iter()
        .map(|&d| ((d - floor) / (full - floor).max(1e-6)).clamp(0.0, 1.0))
        .collect();
    Ok(Ink {
        coverage: Plane {
            width: w,
            height: h,
            values: coverage,
        },
        is_ink,
    })
}

fn median(values: &mut [f32]) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    let middle = values.len() / 2;
    Some(*values.select_nth_unstable_by(middle, f32::total_cmp).1)
}

/// Step 4's result: the digit's bounding box, in pixels of the working image, half-open.
pub struct DigitBox {
    pub left: usize,
    pub top: usize,
    pub right: usize,
    pub bottom: usize,
}

/// Connected pieces of ink smaller than this fraction of the largest are specks, not the digit.
const SPECK_FRACTION: usize = 20;

/// Step 4: the bounding box of the ink's connected pieces (8-connected), leaving out pieces of
/// less than 1/[`SPECK_FRACTION`] of the largest one's pixels: dust and dirt beside a digit.
pub fn digit_box(ink: &Ink) -> Result<DigitBox, NoDigit> {
    let (w, h) = (ink.coverage.width, ink.coverage.height);
    let mut piece = vec![u32::MAX; w * h];
    let mut pieces: Vec<(usize, DigitBox)> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !ink.is_ink[start] || piece[start] != u32::MAX {
            continue;
        }
        let id = pieces.len() as u32;
        let mut area = 0;
        let mut bounds = DigitBox {
            left: w,
            top: h,
            right: 0,
            bottom: 0,
        };
        piece[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            area += 1;
            bounds.left = bounds.left.min(x);
            bounds.top = bounds.top.min(y);
            bounds.right = bounds.right.max(x + 1);
            bounds.bottom = bounds.bottom.max(y + 1);
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let j = ny * w + nx;
                    if ink.is_ink[j] && piece[j] == u32::MAX {
                        piece[j] = id;
                        stack.push(j);
                    }
                }
            }
        }
        pieces.push((area, bounds));
    }
    let largest = pieces
        .iter()
        .map(|(area, _)| *area)
        .max()
        .ok_or(NoDigit::Blank)?;
    let mut digit = DigitBox {
        left: w,
        top: h,
        right: 0,
        bottom: 0,
    };
    for (_, bounds) in pieces
        .iter()
        .filter(|(area, _)| area * SPECK_FRACTION >= largest)
    {
        digit.left = digit.left.min(bounds.left);
        digit.top = digit.top.min(bounds.top);
        digit.right = digit.right.max(bounds.right);
        digit.bottom = digit.bottom.max(bounds.bottom);
    }
    let side = (digit.right - digit.left).max(digit.bottom - digit.top);
    let least = MIN_BOX_SIDE.max(w.max(h).div_ceil(MIN_BOX_FRACTION));
    if side < least {
        return Err(NoDigit::TooSmall { side, least });
    }
    // MNIST's box held all of the digit's anti-aliased edge, so the box grows to the faint ink
    // around it: within one output pixel's width, as far as the coverage is not zero.
    let reach = side.div_ceil(DIGIT_BOX);
    let near = DigitBox {
        left: digit.left.saturating_sub(reach),
        top: digit.top.saturating_sub(reach),
        right: (digit.right + reach).min(w),
        bottom: (digit.bottom + reach).min(h),
    };
    let mut grown = DigitBox { ..digit };
    for y in near.top..near.bottom {
        for x in near.left..near.right {
            if ink.coverage.at(x, y) > 0.0 {
                grown.left = grown.left.min(x);
                grown.top = grown.top.min(y);
                grown.right = grown.right.max(x + 1);
                grown.bottom = grown.bottom.max(y + 1);
            }
        }
    }
    Ok(grown)
}

/// Step 5: the box scaled so that its longer side is 20 pixels, each output pixel the average
/// coverage of the area it covers (MNIST's anti-aliasing), with a margin of a pixel around for
/// what the box's edge cuts; then placed in 28x28 with its centre of mass on the
/// centre, by whole pixels as MNIST did.
pub fn resample(ink: &Ink, digit: &DigitBox) -> Result<[u8; IMAGE_LEN], NoDigit> {
    const MARGIN: usize = 1;
    let (bw, bh) = (digit.right - digit.left, digit.bottom - digit.top);
    let scale = DIGIT_BOX as f64 / bw.max(bh) as f64;
    let out_w = (bw as f64 * scale).ceil() as usize + 2 * MARGIN;
    let out_h = (bh as f64 * scale).ceil() as usize + 2 * MARGIN;
    let columns = area_weights(digit.left, out_w, MARGIN, scale, ink.coverage.width);
    let rows = area_weights(digit.top, out_h, MARGIN, scale, ink.coverage.height);
    let mut canvas = vec![0.0f64; out_w * out_h];
    for (oy, row_weights) in rows.iter().enumerate() {
        for (ox, column_weights) in columns.iter().enumerate() {
            let mut sum = 0.0;
            for &(y, wy) in row_weights {
                for &(x, wx) in column_weights {
                    sum += wy * wx * f64::from(ink.coverage.at(x, y));
                }
            }
            canvas[oy * out_w + ox] = sum;
        }
    }
    let mass: f64 = canvas.iter().sum();
    if mass < f64::from(MIN_INK) {
        return Err(NoDigit::TooThin { ink: mass as f32 });
    }
    // MNIST's centres of mass average (14.0, 14.0) in pixel indices.
    let centre = |coordinate: &dyn Fn(usize) -> usize| {
        canvas
            .iter()
            .enumerate()
            .map(|(i, v)| v * coordinate(i) as f64)
            .sum::<f64>()
            / mass
    };
    let middle = (IMAGE_SIDE / 2) as f64;
    let shift_x = (middle - centre(&|i| i % out_w)).round() as i64;
    let shift_y = (middle - centre(&|i| i / out_w)).round() as i64;
    let mut pixels = [0u8; IMAGE_LEN];
    for (i, v) in canvas.iter().enumerate() {
        let x = (i % out_w) as i64 + shift_x;
        let y = (i / out_w) as i64 + shift_y;
        if (0..IMAGE_SIDE as i64).contains(&x) && (0..IMAGE_SIDE as i64).contains(&y) {
            pixels[y as usize * IMAGE_SIDE + x as usize] = (v * 255.0).round().min(255.0) as u8;
        }
    }
    Ok(pixels)
}

/// For each of `count` output pixels along one axis, the source pixels it covers and the share
/// of it each covers: output pixel `o` spans source `[start + (o - margin) / scale, start +
/// (o - margin + 1) / scale)`. Source beyond the image is paper.
fn area_weights(
    start: usize,
    count: usize,
    margin: usize,
    scale: f64,
    len: usize,
) -> Vec<Vec<(usize, f64)>> {
    (0..count)
        .map(|o| {
            let from = start as f64 + (o as f64 - margin as f64) / scale;
            let to = from + 1.0 / scale;
            let first = from.floor().max(0.0) as usize;
            let last = (to.ceil().max(0.0) as usize).min(len);
            (first..last)
                .filter_map(|s| {
                    let overlap = (to.min(s as f64 + 1.0) - from.max(s as f64)) * scale;
                    (overlap > 0.0).then_some((s, overlap))
                })
                .collect()
        })
        .collect()
}

/// The three likeliest classes of `probabilities`, likeliest first.
pub fn top3(probabilities: &[f32; CLASSES]) -> [(usize, f32); 3] {
    let mut classes: Vec<usize> = (0..CLASSES).collect();
    classes.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    [0, 1, 2].map(|i| (classes[i], probabilities[classes[i]]))
}

/// `PATH: DIGIT (c1 p1, c2 p2, c3 p3)`.
pub fn text_line(path: &Path, probabilities: &[f32; CLASSES]) -> String {
    let top = top3(probabilities);
    let ranked: Vec<String> = top.iter().map(|(c, p)| format!("{c} {p:.6}")).collect();
    format!("{}: {} ({})", path.display(), top[0].0, ranked.join(", "))
}

/// `{"path": ..., "digit": ..., "top": [{"class": c, "probability": p}, ...]}`.
pub fn json_line(path: &Path, probabilities: &[f32; CLASSES]) -> String {
    let top = top3(probabilities);
    let ranked: Vec<String> = top
        .iter()
        .map(|(c, p)| format!("{{\"class\": {c}, \"probability\": {p:.6}}}"))
        .collect();
    format!(
        "{{\"path\": {}, \"digit\": {}, \"top\": [{}]}}",
        json_string(&path.display().to_string()),
        top[0].0,
        ranked.join(", ")
    )
}

/// `{"path": ..., "error": ...}`.
pub fn json_error_line(path: &Path, problem: &ImageProblem) -> String {
    format!(
        "{{\"path\": {}, \"error\": {}}}",
        json_string(&path.display().to_string()),
        json_string(&problem.to_string())
    )
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Softmax of one row of logits.
pub fn softmax(logits: &[f32]) -> [f32; CLASSES] {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out = [0.0; CLASSES];
    let mut sum = 0.0;
    for (o, &z) in out.iter_mut().zip(logits) {
        *o = (z - max).exp();
        sum += *o;
    }
    out.map(|v| v / sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    /// A dark stroke on light paper, off-centre in a large image.
    fn bar_on_paper() -> GrayImage {
        GrayImage::from_fn(200, 120, |x, y| {
            Luma([if (30..40).contains(&x) && (20..100).contains(&y) {
                10
            } else {
                240
            }])
        })
    }

    fn prepare_gray(gray: GrayImage) -> Result<[u8; IMAGE_LEN], ImageProblem> {
        prepare_image(&DynamicImage::ImageLuma8(gray))
    }

    #[test]
    fn dark_on_light_is_inverted_fitted_and_centred() {
        let pixels = prepare_gray(bar_on_paper()).unwrap();
        let at = |x: usize, y: usize| pixels[y * IMAGE_SIDE + x];
        // 80 tall, 10 wide: 20 tall, 2.5 wide, its centre of mass half a pixel from index 14.
        let rows: Vec<usize> = (0..IMAGE_SIDE).filter(|&y| at(14, y) > 128).collect();
        assert_eq!(rows.len(), 20, "{rows:?}");
        assert_eq!((rows[0], rows[19]), (5, 24));
        assert_eq!(at(0, 0), 0);
        let ink: f32 = pixels.iter().map(|&p| f32::from(p) / 255.0).sum();
        assert!((ink - 50.0).abs() < 1.0, "{ink}");
    }

    #[test]
    fn otsu_splits_two_levels_between_them() {
        let values: Vec<f32> = (0..100).map(|i| if i < 70 { 0.2 } else { 0.9 }).collect();
        let t = otsu(&values).unwrap();
        assert!(t > 0.2 && t < 0.9, "{t}");
        assert_eq!(otsu(&[0.5; 10]), None);
    }

    #[test]
    fn the_paper_fit_follows_a_gradient_of_light_under_the_ink() {
        let light = |x: usize| 0.9 - 0.4 * x as f32 / 60.0;
        let is_ink = |x: usize, y: usize| (20..24).contains(&x) && (10..30).contains(&y);
        let page = Plane {
            width: 60,
            height: 40,
            values: (0..2400)
                .map(|i| {
                    let (x, y) = (i % 60, i / 60);
                    light(x) * if is_ink(x, y) { 0.2 } else { 1.0 }
                })
                .collect(),
        };
        let paper = Paper::fit(&page).unwrap();
        assert!(paper.dark_ink);
        for (x, y) in [(0, 0), (59, 39), (22, 20)] {
            assert!((paper.at(x, y) - light(x)).abs() < 1e-3, "{x} {y}");
        }
        // Under the ink, darkness is relative to the paper there: the same all along the stroke.
        let ink = ink_coverage(&page, &paper).unwrap();
        assert_eq!(ink.coverage.at(21, 12), 1.0);
        assert_eq!(ink.coverage.at(5, 5), 0.0);
        let blank = Plane {
            values: (0..2400).map(|i| light(i % 60)).collect(),
            ..page
        };
        assert!(Paper::fit(&blank).is_none(), "a gradient alone is blank");
    }

    /// Two strokes, one in the light and one in a soft shadow that dims the page's right half by
    /// 40%, prepare as they do in even light.
    #[test]
    fn a_soft_shadow_is_not_ink() {
        let page = |shadow: f32| {
            GrayImage::from_fn(200, 120, |x, y| {
                let stroke =
                    ((60..70).contains(&x) || (120..130).contains(&x)) && (20..100).contains(&y);
                let edge = ((x as f32 - 70.0) / 60.0).clamp(0.0, 1.0);
                let light = 1.0 - shadow * edge * edge * (3.0 - 2.0 * edge);
                Luma([((if stroke { 0.1 } else { 0.9 }) * light * 255.0) as u8])
            })
        };
        let even = prepare_gray(page(0.0)).unwrap();
        let shadowed = prepare_gray(page(0.4)).unwrap();
        let worst = even
            .iter()
            .zip(&shadowed)
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap();
        assert!(worst <= 8, "{worst}");
    }

    /// A canvas's drawing: black strokes on transparent pixels, which are white paper.
    #[test]
    fn transparent_pixels_are_paper() {
        let bar = |x: u32, y: u32| (30..40).contains(&x) && (20..100).contains(&y);
        let drawing = image::RgbaImage::from_fn(200, 120, |x, y| {
            image::Rgba([0, 0, 0, if bar(x, y) { 255 } else { 0 }])
        });
        let on_white = GrayImage::from_fn(200, 120, |x, y| Luma([if bar(x, y) { 0 } else { 255 }]));
        assert_eq!(
            prepare_image(&DynamicImage::ImageRgba8(drawing)).unwrap(),
            prepare_gray(on_white).unwrap()
        );
    }

    #[test]
    fn blank_images_are_refused() {
        let err = prepare_gray(GrayImage::from_pixel(50, 50, Luma([255]))).unwrap_err();
        assert!(err.to_string().contains("blank"), "{err}");
    }
}
