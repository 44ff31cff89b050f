//! 2-D convolution as GEMM on image patches, images split across threads.
//!
//! Seen as a product, a convolution multiplies the weight `[out, in·k·k]` with the image's
//! columns `[in·k·k, out_h·out_w]`, whose row (c, di, dj) holds the pixel every output position
//! multiplies with w[·, c, di, dj]. Those columns are never written out: [`Patches`] packs them
//! straight into the GEMM's panels from a zero-padded copy of the image (the padding leaves the
//! packing no bounds to check). Scratch is per thread and grows once; an op allocates only the
//! two short offset tables of [`PatchOffsets`].
//!
//! The input gradient of a stride-1 convolution is itself a convolution: of the output gradient,
//! padded by k−1−p, with the weight flipped in space and transposed in channels. So it too runs
//! on patches, and writes each pixel of dx once instead of scattering columns back (col2im),
//! which only strided convolutions still do.

#[cfg(target_arch = "x86_64")]
use super::gemm::gemm_a_in_place;
use super::gemm::{
    gemm_on_this_thread, Epilogue, InPlace, Kernel, Layout, Matrix, PackB, PackedA, Rows, A,
};
use super::microkernel::{MR, NR};
#[cfg(target_arch = "x86_64")]
use super::pack;
use super::scratch::{with_scratch, COLUMNS, PARTIALS};
#[cfg(target_arch = "x86_64")]
use super::shallow;
use super::winograd::{self, Winograd, WinogradGrad};
use crate::{reference, Conv2dShape};
use rayon::prelude::*;
use std::ops::Range;

/// The weight as a `[out, in·k·k]` matrix.
fn weight_layout(s: &Conv2dShape) -> Layout {
    Layout::row_major(s.out_channels, s.in_channels * s.kernel * s.kernel)
}

/// One image's columns: `[in·k·k, out_h·out_w]`.
fn columns_layout(s: &Conv2dShape) -> Layout {
    Layout::row_major(
        s.in_channels * s.kernel * s.kernel,
        s.out_height() * s.out_width(),
    )
}

/// One image's output: `[out, out_h·out_w]`.
fn output_layout(s: &Conv2dShape) -> Layout {
    Layout::row_major(s.out_channels, s.out_height() * s.out_width())
}

/// A shape with a zero extent has no images to split; the reference loops cover it.
fn degenerate(s: &Conv2dShape) -> bool {
    s.input_len() == 0 || s.output_len() == 0
}

pub fn forward(s: &Conv2dShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    if degenerate(s) {
        return reference::conv2d_forward(s, x, w, b, y);
    }
    let conv = ImageConv::new(s, w, Some(b));
    let (image_len, out_len) = (s.input_len() / s.batch, s.output_len() / s.batch);
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(image_len))
        .for_each(|(y, x)| conv.image(x, y));
}

/// A convolution's weight prepared once for all its images, one image at a time: straight from
/// the image where the shape is shallow enough, by Winograd's transforms where it is a deep
/// 3x3 convolution that keeps the image's size, else as a product on its patches.
pub(super) enum ImageConv<'a> {
    #[cfg(target_arch = "x86_64")]
    Shallow(shallow::Shallow<'a>),
    Winograd(Winograd),
    Product(Convolution<'a>),
}

impl<'a> ImageConv<'a> {
    /// For a shape that is not [`degenerate`].
    pub(super) fn new(s: &'a Conv2dShape, w: &'a [f32], b: Option<&'a [f32]>) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(b) = b.filter(|_| shallow::applies(Kernel::detect(), s)) {
            return ImageConv::Shallow(shallow::Shallow::new(Kernel::detect(), s, w, b));
        }
        if winograd::applies(s) {
            return ImageConv::Winograd(Winograd::new(s, w, b));
        }
        ImageConv::Product(Convolution::new(s, w, b))
    }

    /// One image `[in, h, w]` into its output `[out, out_h, out_w]`, on the calling thread.
    pub(super) fn image(&self, x: &[f32], y: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            ImageConv::Shallow(conv) => conv.image(x, y),
            ImageConv::Winograd(conv) => conv.image(x, y),
            ImageConv::Product(conv) => conv.image(x, y),
        }
    }
}

/// A convolution as one GEMM per image: y = w ∗ x (+ b), the bias added as the tiles are stored.
pub(super) struct Convolution<'a> {
    s: Conv2dShape,
    kernel: Kernel,
    /// Every image multiplies the same weight: packed once.
    w: PackedA,
    epilogue: Epilogue<'a>,
    offsets: PatchOffsets,
    /// At stride 1 the output is computed a whole padded row wide, (oy, ox) for ox < pw, so
    /// that a tap's columns are one stretch of the padded image, read in place. The k−1 extra
    /// positions per row cost nothing where the last panel had room for them (14 rows of 16
    /// fill 7 panels of 32, as 14 of 14 do) and are dropped after.
    wide: bool,
}

impl<'a> Convolution<'a> {
    fn new(s: &Conv2dShape, w: &[f32], b: Option<&'a [f32]>) -> Self {
        let wide = s.stride == 1;
        Convolution {
            s: *s,
            kernel: Kernel::detect(),
            w: PackedA::new(Matrix::new(w, weight_layout(s))),
            epilogue: Epilogue {
                row_bias: b,
                ..Epilogue::default()
            },
            offsets: PatchOffsets::new(s, wide),
            wide,
        }
    }

    fn image(&self, x: &[f32], y: &mut [f32]) {
        let (s, kernel) = (&self.s, self.kernel);
        let positions = self.offsets.pixels.len();
        // The extra positions of the last row read up to k−1 floats past the image, and the
        // tile reading the patches in place up to NR past the last position.
        let wide_slack = if self.wide { s.kernel - 1 + NR } else { 0 };
        let padded_len = padded_len(s) + wide_slack;
        let wide_len = if self.wide {
            s.out_channels * positions
        } else {
            0
        };
        let (pw, ow) = (s.width + 2 * s.padding, s.out_width());
        with_scratch(&COLUMNS, padded_len + wide_len, |scratch| {
            let (padded, wide_out) = scratch.split_at_mut(padded_len);
            pad(kernel, s, x, padded);
            let patches = Patches::new(&self.offsets, padded, false);
            let out = if self.wide { &mut *wide_out } else { &mut *y };
            let out_layout = Layout::row_major(s.out_channels, positions);
            let w = A::Packed(&self.w);
            gemm_on_this_thread(kernel, out, out_layout, w, &patches, self.epilogue);
            if !self.wide {
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if pack::has_moves(kernel) {
                let rows = s.out_channels * s.out_height();
                let (src, dst) = (wide_out.as_ptr(), y.as_mut_ptr());
                // SAFETY: the CPU runs the kernel; `rows` rows of `pw` (source) and of `ow`
                // (destination) are what the two hold.
                return unsafe { pack::copy_rows(kernel, src, pw, dst, ow, rows, ow) };
            }
            for (y_row, wide_row) in y.chunks_exact_mut(ow).zip(wide_out.chunks_exact(pw)) {
                y_row.copy_from_slice(&wide_row[..ow]);
            }
        })
    }
}

pub fn backward_input(s: &Conv2dShape, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    if degenerate(s) {
        return reference::conv2d_backward_input(s, w, dy, dx);
    }
    let grad = InputGrad::new(s, w);
    let (image_len, out_len) = (s.input_len() / s.batch, s.output_len() / s.batch);
    dx.par_chunks_mut(image_len)
        .zip(dy.par_chunks(out_len))
        .for_each(|(dx, dy)| grad.image(dy, dx));
}

/// The input gradient of a convolution, one image at a time.
pub(super) enum InputGrad<'a> {
    /// The input gradient of a stride-1 convolution with enough input channels to fill the
    /// GEMM's rows, as a convolution itself:
    /// dx[c, y, x] = Σ_{o,di,dj} w[o, c, di, dj]·dy[o, y+p−di, x+p−dj]; with di' = k−1−di that
    /// is a convolution of dy padded by k−1−p with w'[c, o, di', dj'].
    Transposed(Convolution<'a>),
    /// The same convolution by Winograd's transforms, where it is one they compute.
    Winograd(Winograd),
    /// Else the columns dcol = wᵀ·dy, added back onto the pixels they came from (col2im).
    Columns {
        s: &'a Conv2dShape,
        kernel: Kernel,
        w_t: PackedA,
    },
}

impl<'a> InputGrad<'a> {
    /// For a shape that is not [`degenerate`].
    pub(super) fn new(s: &'a Conv2dShape, w: &[f32]) -> Self {
        let k = s.kernel;
        if s.stride == 1 && s.padding < k && s.in_channels >= MR {
            let transposed = Conv2dShape {
                batch: s.batch,
                in_channels: s.out_channels,
                out_channels: s.in_channels,
                height: s.out_height(),
                width: s.out_width(),
                kernel: k,
                stride: 1,
                padding: k - 1 - s.padding,
            };
            let mut flipped = vec![0.0; w.len()];
            for (tap, &value) in w.iter().enumerate() {
                let (o, c, di, dj) = (
                    tap / (s.in_channels * k * k),
                    tap / (k * k) % s.in_channels,
                    tap / k % k,
                    tap % k,
                );
                flipped[((c * s.out_channels + o) * k + k - 1 - di) * k + k - 1 - dj] = value;
            }
            if winograd::applies(&transposed) {
                return InputGrad::Winograd(Winograd::new(&transposed, &flipped, None));
            }
            return InputGrad::Transposed(Convolution::new(&transposed, &flipped, None));
        }
        InputGrad::Columns {
            s,
            kernel: Kernel::detect(),
            w_t: PackedA::new(Matrix::new(w, weight_layout(s).t())),
        }
    }

    /// One image: dy `[out, out_h, out_w]` → dx `[in, h, w]`.
    pub(super) fn image(&self, dy: &[f32], dx: &mut [f32]) {
        let (s, kernel, w_t) = match self {
            InputGrad::Transposed(conv) => return conv.image(dy, dx),
            InputGrad::Winograd(conv) => return conv.image(dy, dx),
            InputGrad::Columns { s, kernel, w_t } => (*s, *kernel, w_t),
        };
        let columns = columns_layout(s);
        let len = padded_len(s) + columns.rows * columns.cols;
        with_scratch(&COLUMNS, len, |scratch| {
            let (padded, dcol) = scratch.split_at_mut(padded_len(s));
            let dy = Matrix::new(dy, output_layout(s));
            let w_t = A::Packed(w_t);
            gemm_on_this_thread(kernel, dcol, columns, w_t, &dy, Epilogue::default());
            col2im(s, dcol, padded, dx);
        })
    }
}

pub fn backward_weight(s: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) {
    if degenerate(s) {
        return reference::conv2d_backward_weight(s, x, dy, dw, db);
    }
    let grad = WeightGrad::new(s);
    let (image_len, out_len) = (s.input_len() / s.batch, s.output_len() / s.batch);
    grad.sum_images(dw, db, |images, sums| {
        for n in images {
            let (x, dy) = (
                &x[n * image_len..][..image_len],
                &dy[n * out_len..][..out_len],
            );
            grad.add_image(x, dy, sums);
        }
    });
}

/// The weight and bias gradients of a convolution, summed image by image: each thread sums a
/// run of images into its own partial sums, which are added at the end in thread order, so no
/// two threads write the same memory and the result does not depend on timing.
pub(super) enum WeightGrad<'a> {
    #[cfg(target_arch = "x86_64")]
    Shallow(shallow::ShallowGrad<'a>),
    /// A deep 3x3 convolution that keeps the image's size, by Winograd's transforms.
    Winograd(WinogradGrad),
    /// At stride 1 on a kernel that reads A in place: dwᵀ[(c,di,dj), o] += Σ_q patches[(c,di,dj), q]·dy[o, q] over the
    /// wide positions q (dy zero past each row's end), the patches read in place as A, a row
    /// per tap, so nothing is gathered; the partial sums hold dwᵀ, transposed at the end.
    #[cfg(target_arch = "x86_64")]
    Wide {
        s: &'a Conv2dShape,
        kernel: Kernel,
        taps: Vec<usize>,
    },
    /// dw[o, (c,di,dj)] += Σ_pixels dy[o, pixel]·columns[(c,di,dj), pixel], one product per image.
    Product {
        s: &'a Conv2dShape,
        kernel: Kernel,
        offsets: PatchOffsets,
    },
}

impl<'a> WeightGrad<'a> {
    /// For a shape that is not [`degenerate`].
    pub(super) fn new(s: &'a Conv2dShape) -> Self {
        #[cfg(target_arch = "x86_64")]
        if shallow::applies(Kernel::detect(), s) {
            return WeightGrad::Shallow(shallow::ShallowGrad::new(Kernel::detect(), s));
        }
        if winograd::applies(s) {
            return WeightGrad::Winograd(WinogradGrad::new(s));
        }
        #[cfg(target_arch = "x86_64")]
        if s.stride == 1 && Kernel::detect().reads_in_place() {
            return WeightGrad::Wide {
                s,
                kernel: Kernel::detect(),
                taps: tap_offsets(s),
            };
        }
        WeightGrad::Product {
            s,
            kernel: Kernel::detect(),
            offsets: PatchOffsets::new(s, false),
        }
    }

    /// Splits the images into one run per thread, has `add` sum each run into its thread's
    /// partial sums (zeroed first, then given to [`WeightGrad::add_image`]), and writes their
    /// total to dw and db.
    pub(super) fn sum_images(
        &self,
        dw: &mut [f32],
        db: &mut [f32],
        add: impl Fn(Range<usize>, &mut [f32]) + Sync,
    ) {
        let s = match self {
            #[cfg(target_arch = "x86_64")]
            WeightGrad::Shallow(grad) => return grad.sum_images(dw, db, add),
            WeightGrad::Winograd(grad) => return grad.sum_images(dw, db, add),
            #[cfg(target_arch = "x86_64")]
            WeightGrad::Wide { s, .. } => s,
            WeightGrad::Product { s, .. } => s,
        };
        #[cfg(target_arch = "x86_64")]
        let transposed = matches!(self, WeightGrad::Wide { .. });
        #[cfg(not(target_arch = "x86_64"))]
        let transposed = false;
        let taps = s.in_channels * s.kernel * s.kernel;
        let partial_len = dw.len() + db.len();
        sum_per_thread(s.batch, partial_len, add, |partials| {
            dw.fill(0.0);
            db.fill(0.0);
            for partial in partials.chunks_exact(partial_len) {
                let (pdw, pdb) = partial.split_at(dw.len());
                if transposed {
                    // pdw is dwᵀ: [taps, out].
                    for (o, dw) in dw.chunks_exact_mut(taps).enumerate() {
                        for (t, d) in dw.iter_mut().enumerate() {
                            *d += pdw[t * s.out_channels + o];
                        }
                    }
                } else {
                    dw.iter_mut().zip(pdw).for_each(|(d, p)| *d += p);
                }
                db.iter_mut().zip(pdb).for_each(|(d, p)| *d += p);
            }
        });
    }

    /// Adds one image's gradients, x `[in, h, w]` and dy `[out, out_h, out_w]`, to a thread's
    /// partial sums.
    pub(super) fn add_image(&self, x: &[f32], dy: &[f32], partial: &mut [f32]) {
        let (s, kernel, offsets) = match self {
            #[cfg(target_arch = "x86_64")]
            WeightGrad::Shallow(grad) => return grad.add_image(x, dy, partial),
            WeightGrad::Winograd(grad) => return grad.add_image(x, dy, partial),
            #[cfg(target_arch = "x86_64")]
            WeightGrad::Wide { s, kernel, taps } => {
                return add_wide_image(s, *kernel, taps, x, dy, partial)
            }
            WeightGrad::Product { s, kernel, offsets } => (*s, *kernel, offsets),
        };
        let accumulate = Epilogue {
            accumulate: true,
            ..Epilogue::default()
        };
        let plane = s.out_height() * s.out_width();
        let (pdw, pdb) = partial.split_at_mut(s.weight_len());
        with_scratch(&COLUMNS, padded_len(s), |padded| {
            pad(kernel, s, x, padded);
            let dy_matrix = A::Matrix(Matrix::new(dy, output_layout(s)));
            let patches = Patches::new(offsets, padded, true);
            gemm_on_this_thread(
                kernel,
                pdw,
                weight_layout(s),
                dy_matrix,
                &patches,
                accumulate,
            );
        });
        for (sum, plane) in pdb.iter_mut().zip(dy.chunks_exact(plane)) {
            *sum += sum_of(plane);
        }
    }
}

/// Splits `batch` images into one run per thread; `add(images, partial)` sums a run into that
/// thread's `partial_len` floats (zeroed first); then `total` reads the partials, one after the
/// other in thread order, so the result does not depend on which thread finished first.
pub(super) fn sum_per_thread(
    batch: usize,
    partial_len: usize,
    add: impl Fn(Range<usize>, &mut [f32]) + Sync,
    total: impl FnOnce(&[f32]),
) {
    let groups = rayon::current_num_threads().clamp(1, batch.max(1));
    with_scratch(&PARTIALS, groups * partial_len, |partials| {
        partials
            .par_chunks_mut(partial_len)
            .enumerate()
            .for_each(|(group, partial)| {
                partial.fill(0.0);
                add(
                    group * batch / groups..(group + 1) * batch / groups,
                    partial,
                );
            });
        total(partials)
    })
}

/// [`WeightGrad::add_image`] at stride 1: dwᵀ += patches·dyᵀ over the wide positions.
#[cfg(target_arch = "x86_64")]
fn add_wide_image(
    s: &Conv2dShape,
    kernel: Kernel,
    taps: &[usize],
    x: &[f32],
    dy: &[f32],
    partial: &mut [f32],
) {
    let (ow, pw) = (s.out_width(), s.width + 2 * s.padding);
    let positions = s.out_height() * pw;
    // The last row's extra positions read k−1 floats past the image.
    let padded_len = padded_len(s) + s.kernel - 1;
    let (pdw_t, pdb) = partial.split_at_mut(s.weight_len());
    with_scratch(
        &COLUMNS,
        padded_len + s.out_channels * positions,
        |scratch| {
            let (padded, dy_wide) = scratch.split_at_mut(padded_len);
            pad(kernel, s, x, padded);
            // dy in the wide layout: each output row, then zeros to the padded width.
            for (wide, row) in dy_wide.chunks_exact_mut(pw).zip(dy.chunks_exact(ow)) {
                wide[..ow].copy_from_slice(row);
                wide[ow..].fill(0.0);
            }
            let dy_t = Matrix::new(dy_wide, Layout::row_major(s.out_channels, positions).t());
            let taps_layout = Layout::row_major(taps.len(), s.out_channels);
            let a = (&*padded, Rows::Offsets(taps));
            gemm_a_in_place(kernel, pdw_t, taps_layout, a, &dy_t, true);
        },
    );
    let plane = s.out_height() * ow;
    for (sum, plane) in pdb.iter_mut().zip(dy.chunks_exact(plane)) {
        *sum += sum_of(plane);
    }
}

pub(super) fn padded_len(s: &Conv2dShape) -> usize {
    s.in_channels * (s.height + 2 * s.padding) * (s.width + 2 * s.padding)
}

/// Copies one image `[in, h, w]` into the middle of a zero border `padding` wide.
pub(super) fn pad(kernel: Kernel, s: &Conv2dShape, image: &[f32], padded: &mut [f32]) {
    let (ph, pw) = (s.height + 2 * s.padding, s.width + 2 * s.padding);
    padded.fill(0.0);
    let planes = padded
        .chunks_exact_mut(ph * pw)
        .zip(image.chunks_exact(s.height * s.width));
    for (padded, image) in planes {
        #[cfg(target_arch = "x86_64")]
        if pack::has_moves(kernel) {
            let dst = padded[s.padding * pw + s.padding..].as_mut_ptr();
            // SAFETY: the CPU runs the kernel; the image's rows and their places in the padded
            // plane both lie inside their planes.
            unsafe { pack::copy_rows(kernel, image.as_ptr(), s.width, dst, pw, s.height, s.width) };
            continue;
        }
        let rows = padded[s.padding * pw..]
            .chunks_exact_mut(pw)
            .zip(image.chunks_exact(s.width));
        for (padded, image) in rows {
            padded[s.padding..][..s.width].copy_from_slice(image);
        }
    }
}

/// Where a shape's im2col entries lie in its zero-padded image: entry (tap, pixel) is
/// `padded[taps[tap] + pixels[pixel]]`. Computed once per op, shared by its images.
pub(super) struct PatchOffsets {
    /// Offset of tap (c, di, dj): the rows of the columns.
    taps: Vec<usize>,
    /// Offset of each output position's top-left tap: the columns.
    pixels: Vec<usize>,
    /// Whether `pixels[q] = q`: every row of the columns is then one run of the padded image.
    wide: bool,
}

impl PatchOffsets {
    /// `wide` (stride 1 only): output positions (oy, ox) for every ox < pw, so that position
    /// oy·pw + ox lies at that very offset.
    fn new(s: &Conv2dShape, wide: bool) -> Self {
        let pw = s.width + 2 * s.padding;
        let taps = tap_offsets(s);
        let ow = s.out_width();
        let pixels = if wide {
            (0..s.out_height() * pw).collect()
        } else {
            (0..s.out_height() * ow)
                .map(|q| (q / ow) * s.stride * pw + (q % ow) * s.stride)
                .collect()
        };
        PatchOffsets { taps, pixels, wide }
    }
}

/// Where each tap (c, di, dj) of a shape lies in its zero-padded image, in weight order:
/// `c·ph·pw + di·pw + dj`.
pub(super) fn tap_offsets(s: &Conv2dShape) -> Vec<usize> {
    let (ph, pw, k) = (s.height + 2 * s.padding, s.width + 2 * s.padding, s.kernel);
    (0..s.in_channels * k * k)
        .map(|tap| (tap / (k * k)) * ph * pw + (tap / k % k) * pw + tap % k)
        .collect()
}

/// An image's im2col columns `[in·k·k, out_h·out_w]` (or, transposed, `[out_h·out_w, in·k·k]`),
/// read from its zero-padded copy as the GEMM packs them.
struct Patches<'a> {
    padded: &'a [f32],
    taps: &'a [usize],
    pixels: &'a [usize],
    wide: bool,
    transposed: bool,
}

impl<'a> Patches<'a> {
    fn new(offsets: &'a PatchOffsets, padded: &'a [f32], transposed: bool) -> Self {
        Patches {
            padded,
            taps: &offsets.taps,
            pixels: &offsets.pixels,
            wide: offsets.wide,
            transposed,
        }
    }
}

impl PackB for Patches<'_> {
    /// Wide patches are read in place: tap t's row of the columns is `padded[taps[t]..]`, the
    /// NR floats past its end being the slack `convolve` leaves after the image.
    fn in_place(&self) -> Option<InPlace<'_>> {
        (self.wide && !self.transposed).then_some(InPlace {
            data: self.padded,
            rows: Rows::Offsets(self.taps),
        })
    }

    fn shape(&self) -> (usize, usize) {
        let shape = (self.taps.len(), self.pixels.len());
        if self.transposed {
            (shape.1, shape.0)
        } else {
            shape
        }
    }

    fn pack_b(
        &self,
        kernel: Kernel,
        depth: Range<usize>,
        col: usize,
        width: usize,
        panel: &mut [f32],
    ) {
        let (rows, cols) = if self.transposed {
            (self.pixels, self.taps)
        } else {
            (self.taps, self.pixels)
        };
        let cols = &cols[col..][..width];
        // Every element is padded[row + col]: the largest such index bounds them all.
        let last_row = rows[depth.clone()].iter().max().copied().unwrap_or(0);
        let last_col = cols.iter().max().copied().unwrap_or(0);
        assert!(
            last_row + last_col < self.padded.len(),
            "patches: tap outside the image"
        );
        if !self.transposed {
            // Consecutive output positions in a row read consecutive pixels (at stride 1): copy
            // those runs whole.
            // (first column, length, first pixel) of each run.
            let mut runs = [(0, 0, 0); NR];
            let mut count = 0;
            for (j, &offset) in cols.iter().enumerate() {
                match runs[..count].last_mut() {
                    Some((_, len, start)) if *start + *len == offset => *len += 1,
                    _ => {
                        runs[count] = (j, 1, offset);
                        count += 1;
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            if pack::has_moves(kernel) {
                let (src, dst) = (self.padded.as_ptr(), panel.as_mut_ptr());
                // SAFETY: the CPU runs the kernel; every run lies in the image (checked above) and
                // in a panel row, and the panel holds NR floats per depth row.
                return unsafe {
                    pack::copy_runs(kernel, src, &rows[depth], &runs[..count], width, dst)
                };
            }
            for (&row, out) in rows[depth].iter().zip(panel.chunks_exact_mut(NR)) {
                for &(j, len, start) in &runs[..count] {
                    out[j..j + len].copy_from_slice(&self.padded[row + start..][..len]);
                }
                out[width..].fill(0.0);
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx512 && last_col <= i32::MAX as usize {
            let rows = rows[depth].iter().copied();
            // SAFETY: the CPU runs the kernel; every element lies in the image (checked above), at
            // a column offset an i32 holds, and the panel holds a row of NR per depth row.
            return unsafe { pack::gather(self.padded.as_ptr(), rows, cols, panel.as_mut_ptr()) };
        }
        for (&row, out) in rows[depth].iter().zip(panel.chunks_exact_mut(NR)) {
            let source = &self.padded[row..];
            for (out, &col) in out.iter_mut().zip(cols) {
                // SAFETY: row + col ≤ last_row + last_col, checked in bounds above.
                *out = unsafe { *source.get_unchecked(col) };
            }
            out[width..].fill(0.0);
        }
    }
}

/// The adjoint of im2col: adds every column entry back onto the pixel it was copied from, in a
/// zero-padded image whose border is then dropped.
fn col2im(s: &Conv2dShape, col: &[f32], padded: &mut [f32], image: &mut [f32]) {
    let (ph, pw) = (s.height + 2 * s.padding, s.width + 2 * s.padding);
    padded.fill(0.0);
    let ow = s.out_width();
    let mut rows = col.chunks_exact(s.out_height() * ow);
    for channel in padded.chunks_exact_mut(ph * pw) {
        for di in 0..s.kernel {
            for dj in 0..s.kernel {
                let row = rows.next().expect("columns hold in·k·k rows");
                for (i, out) in row.chunks_exact(ow).enumerate() {
                    let input = &mut channel[(i * s.stride + di) * pw + dj..];
                    for (pixel, g) in input.iter_mut().step_by(s.stride).zip(out) {
                        *pixel += g;
                    }
                }
            }
        }
    }
    let planes = padded
        .chunks_exact(ph * pw)
        .zip(image.chunks_exact_mut(s.height * s.width));
    for (padded, image) in planes {
        let rows = padded[s.padding * pw..]
            .chunks_exact(pw)
            .zip(image.chunks_exact_mut(s.width));
        for (padded, image) in rows {
            image.copy_from_slice(&padded[s.padding..][..s.width]);
        }
    }
}

/// A sum whose eight independent lanes the compiler can vectorise; a plain fold is one long chain
/// of dependent additions.
pub(super) fn sum_of(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(lane, v)| *lane += v);
    }
    lanes.iter().sum::<f32>() + tail
}
