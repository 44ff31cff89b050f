//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2015): conv2's forward pass and both gradients.
//!
//! Each 2x2 block of a 3x3 convolution's output, from the 4x4 block d of one input channel under
//! it and that channel's filter g, is
//!
//! ```text
//! y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A
//!
//!      ⎡1  0 −1  0⎤        ⎡1    0    0 ⎤
//! Bᵀ = ⎢0  1  1  0⎥    G = ⎢½    ½    ½ ⎥    Aᵀ = ⎡1  1  1  0⎤
//!      ⎢0 −1  1  0⎥        ⎢½   −½    ½ ⎥         ⎣0  1 −1 −1⎦
//!      ⎣0  1  0 −1⎦        ⎣0    0    1 ⎦
//! ```
//!
//! (F(2, 3) in one dimension, nested): 16 multiplications where the direct sum takes 36. The
//! transforms are linear, so the sum over input channels moves inside: for each of the 16
//! elements e of a transformed block, M[e] = V[e]·U[e] is a product of V[e] `[tiles, in]`, the
//! transformed input, with U[e] `[in, out]`, the transformed filter, on the same GEMM as the
//! rest. Per image of conv2 that is 16 products of 49 x 32 x 64: 2.25x fewer flops than the
//! direct convolution, the transforms being additions only.
//!
//! The transforms run channel-last, with the channels as the vector lanes: the image is copied
//! into `[row, col, channel]` (zero-padded), its blocks transformed into `[e, tile, channel]`,
//! each element's `[tile, channel]` one matrix (A read in place), and each product stores
//! `[e, tile, out]`, whose blocks transform
//! back into `[row, col, out]` and are then transposed into the `[out, row, col]` output.
//! The sums are the direct ones in another order, with the transforms' few extra roundings:
//! within the fp32 rule of the tests, not bit for bit.

use super::conv::{sum_of, sum_per_thread};
#[cfg(target_arch = "x86_64")]
use super::gemm::{gemm_a_in_place, Rows};
use super::gemm::{gemm_on_this_thread, Epilogue, Kernel, Layout, Matrix, Panels, A};
#[cfg(target_arch = "x86_64")]
use super::pack;
use super::scratch::{with_scratch, COLUMNS, FILTERS};
use crate::Conv2dShape;

/// Elements of a transformed 4x4 block.
const ELEMENTS: usize = 16;

/// The fewest input channels for which the products' depth is worth the transforms.
const MIN_IN_CHANNELS: usize = 8;

/// Whether a shape is one this file computes: a 3x3 kernel at stride 1 with padding 1 (output as
/// large as the input), deep enough in channels. The input gradient of such a convolution is one
/// too.
pub(super) fn applies(s: &Conv2dShape) -> bool {
    s.kernel == 3 && s.stride == 1 && s.padding == 1 && s.in_channels >= MIN_IN_CHANNELS
}

/// A convolution's filter transformed once for all its images.
pub(super) struct Winograd {
    s: Conv2dShape,
    kernel: Kernel,
    /// U[e] = (G g Gᵀ)[e] for every (in, out) pair, each U[e] an `[in, out]` operand packed
    /// for the products ([`Panels`]), one after the other.
    u: Vec<f32>,
    /// A value per output channel, zeros where the convolution has no bias.
    bias: Vec<f32>,
}

/// Where one image's blocks lie: `tiles_h` x `tiles_w` blocks of 2x2 outputs, reading the
/// `[rows, cols]` zero-padded input (the last block of an odd side reads one more zero row or
/// column, and its extra outputs are dropped).
#[derive(Clone, Copy)]
struct Tiles {
    tiles_h: usize,
    tiles_w: usize,
    rows: usize,
    cols: usize,
}

impl Tiles {
    fn new(s: &Conv2dShape) -> Self {
        let (tiles_h, tiles_w) = (s.out_height().div_ceil(2), s.out_width().div_ceil(2));
        Tiles {
            tiles_h,
            tiles_w,
            rows: 2 * tiles_h + 2,
            cols: 2 * tiles_w + 2,
        }
    }

    fn count(&self) -> usize {
        self.tiles_h * self.tiles_w
    }
}

impl Winograd {
    /// For a shape that [`applies`]; w `[out, in, 3, 3]`.
    pub(super) fn new(s: &Conv2dShape, w: &[f32], bias: Option<&[f32]>) -> Self {
        let (cin, cout) = (s.in_channels, s.out_channels);
        let mut u = FILTERS.take();
        u.clear();
        let len = Panels::len(cin, cout);
        u.resize(ELEMENTS * len, 0.0);
        for (pair, g) in w.chunks_exact(9).enumerate() {
            let (o, c) = (pair / cin, pair % cin);
            let at = Panels::offset(cin, cout, c, o);
            for (e, value) in filter_transform(g).into_iter().enumerate() {
                u[e * len + at] = value;
            }
        }
        Winograd {
            s: *s,
            kernel: Kernel::detect(),
            u,
            bias: bias.map_or_else(|| vec![0.0; cout], <[f32]>::to_vec),
        }
    }

    /// One image `[in, h, w]` into its output `[out, h, w]`, on the calling thread.
    pub(super) fn image(&self, x: &[f32], y: &mut [f32]) {
        let (s, tiles) = (&self.s, Tiles::new(&self.s));
        let (cin, cout) = (s.in_channels, s.out_channels);
        let lens = [
            tiles.rows * tiles.cols * cin,
            tiles.count() * ELEMENTS * cin,
            tiles.count() * ELEMENTS * cout,
            tiles.count() * 4 * cout,
            ELEMENTS * cin.max(cout),
        ];
        with_scratch(&COLUMNS, lens.iter().sum(), |scratch| {
            let (padded, rest) = scratch.split_at_mut(lens[0]);
            let (v, rest) = rest.split_at_mut(lens[1]);
            let (m, rest) = rest.split_at_mut(lens[2]);
            let (out, rows) = rest.split_at_mut(lens[3]);
            let image = (cin, s.height, s.width);
            channels_last(self.kernel, image, x, (tiles.cols, 1), (v, padded));
            transform_input(self.kernel, tiles, padded, v, &mut rows[..ELEMENTS * cin]);
            self.products(tiles, v, m);
            transform_output(self.kernel, tiles, &self.bias, m, (out, rows));
            channels_first(self.kernel, s, tiles, out, y);
        })
    }

    /// M[e] = V[e]·U[e] for each element e: `[e, tile, in]` · `[e, in, out]` → `[e, tile, out]`.
    fn products(&self, tiles: Tiles, v: &[f32], m: &mut [f32]) {
        let (cin, cout) = (self.s.in_channels, self.s.out_channels);
        let count = tiles.count();
        let c_layout = Layout::row_major(count, cout);
        for e in 0..ELEMENTS {
            let len = Panels::len(cin, cout);
            let u = Panels::new(&self.u[e * len..][..len], cin, cout);
            let (v, m) = (&v[e * count * cin..], &mut m[e * count * cout..]);
            #[cfg(target_arch = "x86_64")]
            if self.kernel.reads_in_place() {
                let a = (v, Rows::Stride(cin));
                gemm_a_in_place(self.kernel, m, c_layout, a, &u, false);
                continue;
            }
            let v = Matrix::new(v, Layout::row_major(count, cin));
            gemm_on_this_thread(
                self.kernel,
                m,
                c_layout,
                A::Matrix(v),
                &u,
                Epilogue::default(),
            );
        }
    }
}

impl Drop for Winograd {
    /// Leaves the transformed filter's memory to the next convolution on this thread.
    fn drop(&mut self) {
        FILTERS.set(std::mem::take(&mut self.u));
    }
}

/// The weight and bias gradients of a convolution that [`applies`], by the same transforms.
///
/// y's blocks are linear in g: y = Aᵀ [(G g Gᵀ) ⊙ V] A. Their adjoint takes dy back:
/// dg = Gᵀ [(A dy Aᵀ) ⊙ V] G, summed over every block of every image. The sum moves inside
/// Gᵀ·G, so each image adds, for each element e, the product dU[e] += V[e]ᵀ·Z[e] of the
/// transformed input `[tile, in]` with the transformed gradient Z = A dy Aᵀ `[tile, out]`; dw is
/// Gᵀ dU G of the total.
pub(super) struct WinogradGrad {
    s: Conv2dShape,
    kernel: Kernel,
}

impl WinogradGrad {
    /// For a shape that [`applies`].
    pub(super) fn new(s: &Conv2dShape) -> Self {
        WinogradGrad {
            s: *s,
            kernel: Kernel::detect(),
        }
    }

    /// Floats of a thread's partial sums: dU `[e, in, out]`, then db.
    fn partial_len(&self) -> usize {
        (ELEMENTS * self.s.in_channels + 1) * self.s.out_channels
    }

    /// As [`super::conv::WeightGrad::sum_images`]: each thread's run of images summed into its
    /// partial dU and db by `add`, the partials added in thread order, dw = Gᵀ dU G.
    pub(super) fn sum_images(
        &self,
        dw: &mut [f32],
        db: &mut [f32],
        add: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
    ) {
        let (cin, cout) = (self.s.in_channels, self.s.out_channels);
        let partial_len = self.partial_len();
        sum_per_thread(self.s.batch, partial_len, add, |partials| {
            let partials = || partials.chunks_exact(partial_len);
            for (pair, dw) in dw.chunks_exact_mut(9).enumerate() {
                let (o, c) = (pair / cin, pair % cin);
                let at = |e: usize| (e * cin + c) * cout + o;
                let du = std::array::from_fn(|e| partials().map(|p| p[at(e)]).sum());
                dw.copy_from_slice(&filter_adjoint(du));
            }
            let db_at = ELEMENTS * cin * cout;
            for (o, db) in db.iter_mut().enumerate() {
                *db = partials().map(|p| p[db_at + o]).sum();
            }
        });
    }

    /// Adds one image's gradients, x `[in, h, w]` and dy `[out, h, w]`, to a thread's partial
    /// sums (see [`WinogradGrad::partial_len`]).
    pub(super) fn add_image(&self, x: &[f32], dy: &[f32], partial: &mut [f32]) {
        let (s, tiles, kernel) = (&self.s, Tiles::new(&self.s), self.kernel);
        let (cin, cout) = (s.in_channels, s.out_channels);
        let (oh, ow) = (s.out_height(), s.out_width());
        let lens = [
            tiles.rows * tiles.cols * cin,
            tiles.count() * ELEMENTS * cin,
            tiles.count() * 4 * cout,
            tiles.count() * ELEMENTS * cout,
            ELEMENTS * cin.max(cout),
        ];
        let (du, db) = partial.split_at_mut(ELEMENTS * cin * cout);
        with_scratch(&COLUMNS, lens.iter().sum(), |scratch| {
            let (padded, rest) = scratch.split_at_mut(lens[0]);
            let (v, rest) = rest.split_at_mut(lens[1]);
            let (grid, rest) = rest.split_at_mut(lens[2]);
            let (z, rows) = rest.split_at_mut(lens[3]);
            channels_last(
                kernel,
                (cin, s.height, s.width),
                x,
                (tiles.cols, 1),
                (v, padded),
            );
            transform_input(kernel, tiles, padded, v, &mut rows[..ELEMENTS * cin]);
            // dy's blocks, the outputs past an odd side zero.
            channels_last(
                kernel,
                (cout, oh, ow),
                dy,
                (2 * tiles.tiles_w, 0),
                (z, grid),
            );
            transform_gradient(kernel, tiles, grid, z, &mut rows[..8 * cout]);
            let accumulate = Epilogue {
                accumulate: true,
                ..Epilogue::default()
            };
            let count = tiles.count();
            for (e, du) in du.chunks_exact_mut(cin * cout).enumerate() {
                let (v_t, z) = (
                    A::Matrix(Matrix::new(
                        &v[e * count * cin..],
                        Layout::row_major(count, cin).t(),
                    )),
                    Matrix::new(&z[e * count * cout..], Layout::row_major(count, cout)),
                );
                let du_layout = Layout::row_major(cin, cout);
                gemm_on_this_thread(kernel, du, du_layout, v_t, &z, accumulate);
            }
        });
        for (sum, plane) in db.iter_mut().zip(dy.chunks_exact(oh * ow)) {
            *sum += sum_of(plane);
        }
    }
}

/// G g Gᵀ for a 3x3 filter g (row-major), as the 16 elements of a 4x4 block.
fn filter_transform(g: &[f32]) -> [f32; ELEMENTS] {
    // F(2, 3)'s filter transform of three taps.
    let transform =
        |g0: f32, g1: f32, g2: f32| [g0, (g0 + g1 + g2) * 0.5, (g0 - g1 + g2) * 0.5, g2];
    let columns: [[f32; 4]; 3] = std::array::from_fn(|j| transform(g[j], g[3 + j], g[6 + j]));
    let mut u = [0.0; ELEMENTS];
    for i in 0..4 {
        let row = transform(columns[0][i], columns[1][i], columns[2][i]);
        u[4 * i..][..4].copy_from_slice(&row);
    }
    u
}

/// Gᵀ U G for a 4x4 block U: the adjoint of [`filter_transform`], a 3x3 filter's gradient from
/// its transform's.
fn filter_adjoint(u: [f32; ELEMENTS]) -> [f32; 9] {
    // Gᵀ applied to four values.
    let adjoint = |u0: f32, u1: f32, u2: f32, u3: f32| {
        [u0 + (u1 + u2) * 0.5, (u1 - u2) * 0.5, (u1 + u2) * 0.5 + u3]
    };
    let columns: [[f32; 3]; 4] =
        std::array::from_fn(|j| adjoint(u[j], u[4 + j], u[8 + j], u[12 + j]));
    let mut g = [0.0; 9];
    for i in 0..3 {
        let row = adjoint(columns[0][i], columns[1][i], columns[2][i], columns[3][i]);
        g[3 * i..][..3].copy_from_slice(&row);
    }
    g
}

/// Planes `[channels, h, w]` into `[row, col, channel]`, one pixel's channels contiguous, rows
/// `cols` pixels long: pixel (y, x) at (y + border, x + border), zeros around it. `dense` (as
/// long as the planes) holds them channel-last before their rows are spread out.
fn channels_last(
    kernel: Kernel,
    (channels, h, w): (usize, usize, usize),
    planes: &[f32],
    (cols, border): (usize, usize),
    (dense, grid): (&mut [f32], &mut [f32]),
) {
    let plane = h * w;
    let dense = &mut dense[..channels * plane];
    grid.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if pack::has_moves(kernel) {
        // SAFETY: the CPU runs the kernel; each channel's plane lies in `planes` and each
        // pixel's channels in `dense` (a short block spills zeros only into the next pixel's
        // channels, written after).
        unsafe {
            let (src, dst) = (planes.as_ptr(), dense.as_mut_ptr());
            pack::transpose(kernel, src, plane, channels, plane, dst, channels)
        };
    } else {
        for (c, plane) in planes.chunks_exact(plane).enumerate() {
            for (p, &value) in plane.iter().enumerate() {
                dense[p * channels + c] = value;
            }
        }
    }
    for (y, row) in dense.chunks_exact(w * channels).enumerate() {
        let at = ((y + border) * cols + border) * channels;
        grid[at..][..row.len()].copy_from_slice(row);
    }
}

/// The blocks `[row, col, out]`, each pixel's channels contiguous, into the output
/// `[out, h, w]`, dropping an odd side's extra row or column.
fn channels_first(kernel: Kernel, s: &Conv2dShape, tiles: Tiles, blocks: &[f32], y: &mut [f32]) {
    let (cout, w) = (s.out_channels, s.out_width());
    let (cols, plane) = (2 * tiles.tiles_w, s.out_height() * w);
    #[cfg(target_arch = "x86_64")]
    if pack::has_moves(kernel) && cols == w {
        // SAFETY: the CPU runs the kernel; the first `plane` pixels of the blocks are the
        // output's, in its order, and every channel's plane lies in y.
        return unsafe {
            pack::transpose(
                kernel,
                blocks.as_ptr(),
                cout,
                plane,
                cout,
                y.as_mut_ptr(),
                plane,
            )
        };
    }
    for (o, plane) in y.chunks_exact_mut(plane).enumerate() {
        for (row, out) in plane.chunks_exact_mut(w).enumerate() {
            let blocks = &blocks[row * cols * cout + o..];
            for (x, out) in out.iter_mut().enumerate() {
                *out = blocks[x * cout];
            }
        }
    }
}

/// Bᵀ d B of every block, every channel: `padded` `[row, col, c]` into `v` `[e, tile, c]`,
/// through `rows` (16 x channels floats).
fn transform_input(kernel: Kernel, tiles: Tiles, padded: &[f32], v: &mut [f32], rows: &mut [f32]) {
    match kernel {
        // SAFETY: the CPU has AVX-512F (the kernel is one it runs).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { transform_input_avx512(tiles, padded, v, rows) },
        // SAFETY: the CPU has AVX2 (as above).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => unsafe { transform_input_avx2(tiles, padded, v, rows) },
        _ => transform_input_loops(tiles, padded, v, rows),
    }
}

/// [`transform_input_loops`] compiled for AVX-512: 16 channels a vector.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_input_avx512(tiles: Tiles, padded: &[f32], v: &mut [f32], rows: &mut [f32]) {
    transform_input_loops(tiles, padded, v, rows)
}

/// [`transform_input_loops`] compiled for AVX2: 8 channels a vector.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transform_input_avx2(tiles: Tiles, padded: &[f32], v: &mut [f32], rows: &mut [f32]) {
    transform_input_loops(tiles, padded, v, rows)
}

#[inline(always)]
fn transform_input_loops(tiles: Tiles, padded: &[f32], v: &mut [f32], rows: &mut [f32]) {
    let channels = rows.len() / ELEMENTS;
    let row_len = tiles.cols * channels;
    let (count, plane) = (tiles.count(), tiles.count() * channels);
    for t in 0..count {
        let (ty, tx) = (t / tiles.tiles_w, t % tiles.tiles_w);
        let corner = &padded[2 * ty * row_len + 2 * tx * channels..];
        // Pixel (i, j) of d, its channels.
        let d = |i: usize, j: usize| &corner[i * row_len + j * channels..][..channels];
        // Bᵀ d, a column at a time: `rows[4·j + i]` is row i of column j.
        for (j, column) in rows.chunks_exact_mut(4 * channels).enumerate() {
            let out = four_runs(column, channels, 0, channels);
            input_pass([d(0, j), d(1, j), d(2, j), d(3, j)], out);
        }
        // (Bᵀ d) B, a row at a time: element (i, j) of the block into plane 4·i + j.
        let row = |i: usize, j: usize| &rows[(4 * j + i) * channels..][..channels];
        for i in 0..4 {
            let out = four_runs(v, plane, (4 * i * count + t) * channels, channels);
            input_pass([row(i, 0), row(i, 1), row(i, 2), row(i, 3)], out);
        }
    }
}

/// Four disjoint runs of `n` floats, `stride` apart from `at`: elements (i, 0..4) of a block,
/// in planes `stride` apart, or four vectors of channels one after the other.
#[inline(always)]
fn four_runs(buf: &mut [f32], stride: usize, at: usize, n: usize) -> [&mut [f32]; 4] {
    let (a, rest) = buf[at..].split_at_mut(stride);
    let (b, rest) = rest.split_at_mut(stride);
    let (c, d) = rest.split_at_mut(stride);
    [&mut a[..n], &mut b[..n], &mut c[..n], &mut d[..n]]
}

/// F(2, 3)'s input transform Bᵀ of four vectors of channels `d` into four.
#[inline(always)]
fn input_pass([d0, d1, d2, d3]: [&[f32]; 4], [y0, y1, y2, y3]: [&mut [f32]; 4]) {
    let n = d0.len();
    let (d1, d2, d3) = (&d1[..n], &d2[..n], &d3[..n]);
    let (y0, y1, y2, y3) = (&mut y0[..n], &mut y1[..n], &mut y2[..n], &mut y3[..n]);
    for c in 0..n {
        y0[c] = d0[c] - d2[c];
        y1[c] = d1[c] + d2[c];
        y2[c] = d2[c] - d1[c];
        y3[c] = d1[c] - d3[c];
    }
}

/// Aᵀ M A + bias of every block, every output channel: `m` `[e, tile, out]` into `out`
/// `[row, col, out]`, 2·tiles_h x 2·tiles_w pixels, through `rows` (8 x channels floats).
fn transform_output(
    kernel: Kernel,
    tiles: Tiles,
    bias: &[f32],
    m: &[f32],
    (out, rows): (&mut [f32], &mut [f32]),
) {
    match kernel {
        // SAFETY: the CPU has AVX-512F (the kernel is one it runs).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { transform_output_avx512(tiles, bias, m, out, rows) },
        // SAFETY: the CPU has AVX2 (as above).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => unsafe { transform_output_avx2(tiles, bias, m, out, rows) },
        _ => transform_output_loops(tiles, bias, m, out, rows),
    }
}

/// [`transform_output_loops`] compiled for AVX-512: 16 channels a vector.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_output_avx512(
    tiles: Tiles,
    bias: &[f32],
    m: &[f32],
    out: &mut [f32],
    rows: &mut [f32],
) {
    transform_output_loops(tiles, bias, m, out, rows)
}

/// [`transform_output_loops`] compiled for AVX2: 8 channels a vector.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transform_output_avx2(
    tiles: Tiles,
    bias: &[f32],
    m: &[f32],
    out: &mut [f32],
    rows: &mut [f32],
) {
    transform_output_loops(tiles, bias, m, out, rows)
}

#[inline(always)]
fn transform_output_loops(
    tiles: Tiles,
    bias: &[f32],
    m: &[f32],
    out: &mut [f32],
    rows: &mut [f32],
) {
    let channels = bias.len();
    let rows = &mut rows[..8 * channels];
    let row_len = 2 * tiles.tiles_w * channels;
    let count = tiles.count();
    for t in 0..count {
        let (ty, tx) = (t / tiles.tiles_w, t % tiles.tiles_w);
        let element = |i: usize, j: usize| &m[((4 * i + j) * count + t) * channels..][..channels];
        // Aᵀ M, a column at a time: `rows[2·j + i]` is row i of column j.
        for (j, column) in rows.chunks_exact_mut(2 * channels).enumerate() {
            let m = [element(0, j), element(1, j), element(2, j), element(3, j)];
            output_pass(m, None, column);
        }
        // (Aᵀ M) A + bias, a row at a time, into the block's two pixels of output row i.
        let row = |i: usize, j: usize| &rows[(2 * j + i) * channels..][..channels];
        let corner = 2 * ty * row_len + 2 * tx * channels;
        for i in 0..2 {
            let pixels = &mut out[corner + i * row_len..][..2 * channels];
            let m = [row(i, 0), row(i, 1), row(i, 2), row(i, 3)];
            output_pass(m, Some(bias), pixels);
        }
    }
}

/// F(2, 3)'s output transform Aᵀ of four vectors of channels `m` into two (+ bias), `out`
/// holding them one after the other.
#[inline(always)]
fn output_pass([m0, m1, m2, m3]: [&[f32]; 4], bias: Option<&[f32]>, out: &mut [f32]) {
    let n = m0.len();
    let (m1, m2, m3) = (&m1[..n], &m2[..n], &m3[..n]);
    let (y0, y1) = out.split_at_mut(n);
    let y1 = &mut y1[..n];
    match bias {
        Some(b) => {
            let b = &b[..n];
            for c in 0..n {
                y0[c] = m0[c] + m1[c] + m2[c] + b[c];
                y1[c] = m1[c] - m2[c] - m3[c] + b[c];
            }
        }
        None => {
            for c in 0..n {
                y0[c] = m0[c] + m1[c] + m2[c];
                y1[c] = m1[c] - m2[c] - m3[c];
            }
        }
    }
}

/// A dy Aᵀ of every block, every channel: `grid` `[row, col, out]` (2·tiles_w pixels a row)
/// into `z` `[e, tile, out]`, through `rows` (8 x channels floats).
fn transform_gradient(kernel: Kernel, tiles: Tiles, grid: &[f32], z: &mut [f32], rows: &mut [f32]) {
    match kernel {
        // SAFETY: the CPU has AVX-512F (the kernel is one it runs).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { transform_gradient_avx512(tiles, grid, z, rows) },
        // SAFETY: the CPU has AVX2 (as above).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => unsafe { transform_gradient_avx2(tiles, grid, z, rows) },
        _ => transform_gradient_loops(tiles, grid, z, rows),
    }
}

/// [`transform_gradient_loops`] compiled for AVX-512: 16 channels a vector.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_gradient_avx512(tiles: Tiles, grid: &[f32], z: &mut [f32], rows: &mut [f32]) {
    transform_gradient_loops(tiles, grid, z, rows)
}

/// [`transform_gradient_loops`] compiled for AVX2: 8 channels a vector.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transform_gradient_avx2(tiles: Tiles, grid: &[f32], z: &mut [f32], rows: &mut [f32]) {
    transform_gradient_loops(tiles, grid, z, rows)
}

#[inline(always)]
fn transform_gradient_loops(tiles: Tiles, grid: &[f32], z: &mut [f32], rows: &mut [f32]) {
    let channels = rows.len() / 8;
    let row_len = 2 * tiles.tiles_w * channels;
    let (count, plane) = (tiles.count(), tiles.count() * channels);
    for t in 0..count {
        let (ty, tx) = (t / tiles.tiles_w, t % tiles.tiles_w);
        let corner = &grid[2 * ty * row_len + 2 * tx * channels..];
        // Pixel (i, j) of the block's dy, its channels.
        let dy = |i: usize, j: usize| &corner[i * row_len + j * channels..][..channels];
        // A dy, a column at a time: `rows[4·j + i]` is row i of column j.
        for (j, column) in rows.chunks_exact_mut(4 * channels).enumerate() {
            let out = four_runs(column, channels, 0, channels);
            gradient_pass([dy(0, j), dy(1, j)], out);
        }
        // (A dy) Aᵀ, a row at a time: element (i, j) of the block into plane 4·i + j.
        let row = |i: usize, j: usize| &rows[(4 * j + i) * channels..][..channels];
        for i in 0..4 {
            let out = four_runs(z, plane, (4 * i * count + t) * channels, channels);
            gradient_pass([row(i, 0), row(i, 1)], out);
        }
    }
}

/// A (Aᵀ's transpose) applied to two vectors of channels, into four: the adjoint of
/// [`output_pass`].
#[inline(always)]
fn gradient_pass([y0, y1]: [&[f32]; 2], [z0, z1, z2, z3]: [&mut [f32]; 4]) {
    let n = y0.len();
    let y1 = &y1[..n];
    let (z0, z1, z2, z3) = (&mut z0[..n], &mut z1[..n], &mut z2[..n], &mut z3[..n]);
    for c in 0..n {
        z0[c] = y0[c];
        z1[c] = y0[c] + y1[c];
        z2[c] = y0[c] - y1[c];
        z3[c] = -y1[c];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ⟨G g Gᵀ, U⟩ = ⟨g, Gᵀ U G⟩ for every g and U: the weight gradient's transform is the
    /// forward one's adjoint.
    #[test]
    fn filter_adjoint_is_the_transforms_adjoint() {
        let g: Vec<f32> = (0..9).map(|i| (i as f32 * 0.71 + 0.3).cos()).collect();
        let u: [f32; ELEMENTS] = std::array::from_fn(|e| (e as f32 * 1.3 - 2.0).sin());
        let forward: f64 = filter_transform(&g)
            .iter()
            .zip(&u)
            .map(|(a, b)| (a * b) as f64)
            .sum();
        let adjoint: f64 = filter_adjoint(u)
            .iter()
            .zip(&g)
            .map(|(a, b)| (a * b) as f64)
            .sum();
        assert!((forward - adjoint).abs() < 1e-5, "{forward} vs {adjoint}");
    }

    /// The filter transform against G g Gᵀ written out as matrix products.
    #[test]
    fn filter_transform_is_g_g_gt() {
        let g: Vec<f32> = (0..9).map(|i| (i as f32 * 0.37 - 1.1).sin()).collect();
        let big_g = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let u = filter_transform(&g);
        for i in 0..4 {
            for j in 0..4 {
                let mut want = 0.0f64;
                for a in 0..3 {
                    for b in 0..3 {
                        want += big_g[i][a] * g[3 * a + b] as f64 * big_g[j][b];
                    }
                }
                assert!((u[4 * i + j] as f64 - want).abs() < 1e-6, "({i}, {j})");
            }
        }
    }
}
