//! The CPU GEMM lab: the product C = A·B (A `[m, k]`, B `[k, n]`, C `[m, n]`, all row-major) in
//! the steps that lead from the triple loop to the cpu device's packed micro-kernel, each a small
//! function. tests/cpu_gemm_lab.rs holds every step to the reference, `cargo bench --bench
//! cpu_gemm_lab` times them, and docs/cpu-gemm.md says what each step buys.
//!
//! Every step overwrites C. The steps but the last two run on the calling thread.

use rayon::prelude::*;

/// Rows of the register tile: six rows of A broadcast against two 8-wide vectors of B make
/// twelve accumulators, which with the two B vectors and the broadcast fill 15 of the 16 ymm
/// registers.
pub const MR: usize = 6;
/// Columns of the register tile: two AVX2 vectors.
pub const NR: usize = 16;
/// Depth of a block: a packed B panel, `KC·NR` floats (16 KB), stays in the 32 KB L1.
pub const KC: usize = 256;
/// Rows of A packed at once: `MC·KC` floats (72 KB) stay in L2 while every B panel streams past.
pub const MC: usize = 72;
/// Columns of B packed at once: `KC·NC` floats (512 KB), from L2 and L3.
pub const NC: usize = 512;

/// One step of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `C[i][j] = Σ_p A[i][p]·B[p][j]`, loops i, j, p: B read down a column, a cache line per
    /// multiply-add.
    Naive,
    /// Loops i, p, j: the inner loop walks a row of B and of C, contiguous, and vectorises.
    LoopOrder,
    /// Loops i, p, j within blocks of `KC` depths by `NC` columns, so that B's block stays in
    /// cache while every row of A passes over it.
    Blocked,
    /// Goto's loop nest: A packed into `MR`-row panels and B into `NR`-column panels, each
    /// `MR x NR` tile of C summed in registers over a whole block of depth, by plain loops.
    Packed,
    /// [`Step::Packed`] with the tile written in AVX2 and FMA intrinsics.
    Avx2,
    /// [`Step::Avx2`] with the B panels shared out over rayon's threads.
    Avx2Threads,
    /// The cpu device's own product, [`crate::cpu::gemm::gemm`], on every thread: its
    /// micro-kernel chosen at run time for the CPU.
    Device,
}

impl Step {
    /// Every step, plainest first.
    pub const ALL: [Step; 7] = [
        Step::Naive,
        Step::LoopOrder,
        Step::Blocked,
        Step::Packed,
        Step::Avx2,
        Step::Avx2Threads,
        Step::Device,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Naive => "naive",
            Step::LoopOrder => "loop_order",
            Step::Blocked => "blocked",
            Step::Packed => "packed",
            Step::Avx2 => "avx2",
            Step::Avx2Threads => "avx2_threads",
            Step::Device => "device",
        }
    }

    /// Whether this CPU runs the step (the AVX2 ones need AVX2 and FMA).
    pub fn available(self) -> bool {
        match self {
            Step::Avx2 | Step::Avx2Threads => has_avx2_fma(),
            _ => true,
        }
    }

    /// C = A·B.
    ///
    /// # Panics
    /// If a slice's length disagrees with (m, n, k), or the step is not [`Step::available`].
    pub fn run(self, m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
        assert_eq!(a.len(), m * k, "a is not [m, k]");
        assert_eq!(b.len(), k * n, "b is not [k, n]");
        assert_eq!(c.len(), m * n, "c is not [m, n]");
        assert!(self.available(), "{self:?} needs AVX2 and FMA");
        match self {
            Step::Naive => naive(m, n, k, a, b, c),
            Step::LoopOrder => loop_order(m, n, k, a, b, c),
            Step::Blocked => blocked(m, n, k, a, b, c),
            Step::Packed => packed(m, n, k, a, b, c, Tile::Portable, false),
            Step::Avx2 => packed(m, n, k, a, b, c, Tile::Avx2, false),
            Step::Avx2Threads => packed(m, n, k, a, b, c, Tile::Avx2, true),
            Step::Device => device(m, n, k, a, b, c),
        }
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0;
            for p in 0..k {
                sum += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = sum;
        }
    }
}

fn loop_order(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    c.fill(0.0);
    for i in 0..m {
        let c_row = &mut c[i * n..][..n];
        for p in 0..k {
            let a_ip = a[i * k + p];
            for (c_ij, &b_pj) in c_row.iter_mut().zip(&b[p * n..][..n]) {
                *c_ij += a_ip * b_pj;
            }
        }
    }
}

fn blocked(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    c.fill(0.0);
    for j0 in (0..n).step_by(NC) {
        let width = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            for i in 0..m {
                let c_row = &mut c[i * n + j0..][..width];
                for p in p0..k.min(p0 + KC) {
                    let a_ip = a[i * k + p];
                    for (c_ij, &b_pj) in c_row.iter_mut().zip(&b[p * n + j0..][..width]) {
                        *c_ij += a_ip * b_pj;
                    }
                }
            }
        }
    }
}

/// How a packed step multiplies one tile.
#[derive(Clone, Copy)]
enum Tile {
    Portable,
    Avx2,
}

/// Rows `rows` of A over depths `depths`, as `MR`-row panels: `out[panel][p][i]`, zero past m.
fn pack_a(a: &[f32], k: usize, rows: (usize, usize), depths: (usize, usize), out: &mut Vec<f32>) {
    let ((i0, height), (p0, depth)) = (rows, depths);
    out.clear();
    out.resize(height.div_ceil(MR) * depth * MR, 0.0);
    for (panel, dst) in out.chunks_exact_mut(depth * MR).enumerate() {
        for r in 0..MR.min(height - panel * MR) {
            let row = &a[(i0 + panel * MR + r) * k + p0..][..depth];
            for (p, &value) in row.iter().enumerate() {
                dst[p * MR + r] = value;
            }
        }
    }
}

/// Depths `depths` of B over columns `cols`, as `NR`-column panels: `out[panel][p][j]`, zero
/// past n. Each depth's `NR` columns are one contiguous copy.
fn pack_b(b: &[f32], n: usize, depths: (usize, usize), cols: (usize, usize), out: &mut Vec<f32>) {
    let ((p0, depth), (j0, width)) = (depths, cols);
    out.clear();
    out.resize(width.div_ceil(NR) * depth * NR, 0.0);
    for (panel, dst) in out.chunks_exact_mut(depth * NR).enumerate() {
        let (j, w) = (j0 + panel * NR, NR.min(width - panel * NR));
        for (p, dst) in dst.chunks_exact_mut(NR).enumerate() {
            dst[..w].copy_from_slice(&b[(p0 + p) * n + j..][..w]);
        }
    }
}

/// The `MR x NR` product of one A panel and one B panel over `depth`, by loops the compiler
/// may vectorise for the build's target (SSE2 by default on x86-64: no FMA).
fn tile_portable(depth: usize, a: &[f32], b: &[f32], out: &mut [f32; MR * NR]) {
    let mut acc = [[0.0f32; NR]; MR];
    for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(depth) {
        for (row, &a_i) in acc.iter_mut().zip(a) {
            for (c, &b_j) in row.iter_mut().zip(b) {
                *c += a_i * b_j;
            }
        }
    }
    for (dst, row) in out.chunks_exact_mut(NR).zip(&acc) {
        dst.copy_from_slice(row);
    }
}

/// [`tile_portable`] in AVX2 + FMA: twelve ymm accumulators; per depth two loads of B, six
/// broadcasts of A and twelve fused multiply-adds.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `a` and `b` must hold `depth·MR` and `depth·NR` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(depth: usize, a: &[f32], b: &[f32], out: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= depth * MR && b.len() >= depth * NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..depth {
        // SAFETY: p < depth, so both panels hold these floats (the caller's contract).
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            for (i, row) in acc.iter_mut().enumerate() {
                let a_i = _mm256_broadcast_ss(&*a.add(p * MR + i));
                row[0] = _mm256_fmadd_ps(a_i, b0, row[0]);
                row[1] = _mm256_fmadd_ps(a_i, b1, row[1]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: out holds MR rows of NR floats.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr().add(i * NR), row[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(i * NR + 8), row[1]);
        }
    }
}

impl Tile {
    fn multiply(self, depth: usize, a: &[f32], b: &[f32], out: &mut [f32; MR * NR]) {
        assert!(a.len() >= depth * MR && b.len() >= depth * NR);
        match self {
            Tile::Portable => tile_portable(depth, a, b, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Step::run checked AVX2 and FMA; the panel lengths are asserted above.
            Tile::Avx2 => unsafe { tile_avx2(depth, a, b, out) },
            #[cfg(not(target_arch = "x86_64"))]
            Tile::Avx2 => unreachable!("Step::run refuses AVX2 steps here"),
        }
    }
}

/// C's address, handed to threads that each write their own columns of it.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: the threads given a SharedC write disjoint elements (their own B panels' columns).
unsafe impl Send for SharedC {}
unsafe impl Sync for SharedC {}

impl SharedC {
    /// C[offset..offset + values.len()] += values.
    ///
    /// # Safety
    /// The elements lie in C, and no other thread touches them meanwhile.
    unsafe fn add(&self, offset: usize, values: &[f32]) {
        // SAFETY: passed on from the caller.
        let row = unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), values.len()) };
        row.iter_mut().zip(values).for_each(|(c, v)| *c += v);
    }
}

/// Goto's loop nest: blocks of `NC` columns, `KC` depths and `MC` rows; within a block every
/// A panel meets every B panel in one tile, whose sums are added into C.
#[allow(clippy::too_many_arguments)]
fn packed(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    tile: Tile,
    threads: bool,
) {
    c.fill(0.0);
    let (mut a_packed, mut b_packed) = (Vec::new(), Vec::new());
    let shared = SharedC(c.as_mut_ptr());
    for j0 in (0..n).step_by(NC) {
        let width = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let depth = KC.min(k - p0);
            pack_b(b, n, (p0, depth), (j0, width), &mut b_packed);
            for i0 in (0..m).step_by(MC) {
                let height = MC.min(m - i0);
                pack_a(a, k, (i0, height), (p0, depth), &mut a_packed);
                // One B panel's columns of C, rows i0..i0 + height.
                let panel_columns = |(panel, b_panel): (usize, &[f32])| {
                    let mut out = [0.0; MR * NR];
                    for (strip, a_panel) in a_packed.chunks_exact(depth * MR).enumerate() {
                        tile.multiply(depth, a_panel, b_panel, &mut out);
                        let (i, j) = (i0 + strip * MR, j0 + panel * NR);
                        for (r, row) in out.chunks_exact(NR).take(m - i).enumerate() {
                            // SAFETY: row i + r, columns j..j + NR clipped to n, lies in C, and
                            // only this panel's call writes those columns.
                            unsafe { shared.add((i + r) * n + j, &row[..NR.min(n - j)]) };
                        }
                    }
                };
                let panels = b_packed.chunks_exact(depth * NR).enumerate();
                if threads {
                    panels
                        .collect::<Vec<_>>()
                        .into_par_iter()
                        .for_each(panel_columns);
                } else {
                    panels.for_each(panel_columns);
                }
            }
        }
    }
}

fn device(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    use crate::cpu::gemm::{gemm, Epilogue, Layout, Matrix, A};
    crate::cpu::init_threads();
    let a = Matrix::new(a, Layout::row_major(m, k));
    let b = Matrix::new(b, Layout::row_major(k, n));
    gemm(
        c,
        Layout::row_major(m, n),
        A::Matrix(a),
        &b,
        Epilogue::default(),
    );
}

/// The FMA throughput of one core: `iterations` rounds of fused multiply-adds on ten independent
/// ymm accumulators (ten chains hide the FMA latency of 4 cycles on two pipes), 160 flops a round.
/// Returns a sum of the accumulators so that nothing is optimised away. `None` without AVX2 + FMA.
pub fn fma_peak(iterations: u64) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: checked just above.
        return Some(unsafe { fma_rounds(iterations) });
    }
    let _ = iterations;
    None
}

/// Flops [`fma_peak`] performs for `iterations`.
pub fn fma_peak_flops(iterations: u64) -> u64 {
    iterations * 10 * 8 * 2
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_rounds(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let x = _mm256_set1_ps(0.999_999);
    let y = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 10];
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, x, y);
        }
    }
    let mut sum = [0.0f32; 8];
    let total = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    // SAFETY: sum holds 8 floats.
    unsafe { _mm256_storeu_ps(sum.as_mut_ptr(), total) };
    sum.iter().sum()
}
