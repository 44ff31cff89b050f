//! Single-precision matrix products: C = relu?(C? + bias + A·B), on packed panels.
//!
//! The loops are the usual ones (Goto, BLIS): the depth is cut into blocks of at most `KC`; for
//! each, a block of A's rows is packed into MR-row panels that stay in L2, then every NR-column
//! panel of B is packed (it stays in L1) and multiplied with each A panel by the micro-kernel
//! (`microkernel.rs`). B is anything that can pack its own panels ([`PackB`]): a strided
//! matrix, or a convolution's image patches, which are then never written out as im2col columns.
//!
//! The micro-kernel is picked at run time: AVX-512 where the CPU has it, else AVX2+FMA, else the
//! portable loops; `HANDWRITTEN_CPU_ISA` chooses another (see [`Kernel::from_env`]). Each kernel
//! packs A in panels as high as its tile ([`Kernel::mr`]).

use super::microkernel::{self, Store, MR, MR_AVX2, NR};
#[cfg(target_arch = "x86_64")]
use super::pack;
use super::scratch::{with_scratch, PACKED_A, PACKED_B};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Largest depth of a packed block: a B panel of KC x NR floats (32 KiB) stays in L1.
const KC: usize = 256;

/// The depth cut into blocks of at most [`KC`], as even as can be: 288 is two blocks of 144,
/// not 256 and a short 32 that would load and store C again for little work.
fn depth_blocks(k: usize) -> impl Iterator<Item = Range<usize>> + Clone {
    let blocks = k.div_ceil(KC);
    (0..blocks).map(move |b| b * k / blocks..(b + 1) * k / blocks)
}
/// Bytes of packed A per block: stays in L2.
const A_BLOCK_BYTES: usize = 512 << 10;
/// The most tiles of rows of C for which B is read in place ([`PackB::in_place`]): a panel read
/// in place costs strided loads, from L2 where its rows alias in L1, at every tile that reads
/// it, and a packed one a copy; eight tiles a panel are about where the copy stops paying.
const IN_PLACE_TILES: usize = 8;
/// The same for B's rows a page or more apart (a weight's rows, 12 KB apart in fc1): each of a
/// panel's rows lies on its own page, likely a stride no prefetcher follows, at every tile.
/// At batch 64 (eight tiles) on Zen 4, packing fc1's and fc2's W for their input gradients took
/// an epoch from 21.5 to 20.8 s. A single tile would read its copy only once, so it reads B in
/// place.
const IN_PLACE_STRIDED_TILES: usize = 1;
/// Floats in a 4 KiB page: rows at least this far apart are each on a page of their own.
const PAGE_FLOATS: usize = 1024;
/// Below this many flops a product runs on one thread: splitting it costs more than it saves.
const PARALLEL_FLOPS: usize = 1 << 21;

/// Where an m×n matrix's elements lie in its slice: element (i, j) at `i·row_stride + j·col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Layout {
    pub fn row_major(rows: usize, cols: usize) -> Self {
        Layout {
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The same elements read as the transpose.
    pub fn t(self) -> Self {
        Layout {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// One past the largest offset, so that a slice of this length holds the whole matrix.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
}

/// A matrix read in place: its slice and where its elements lie.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    data: &'a [f32],
    layout: Layout,
}

impl<'a> Matrix<'a> {
    /// # Panics
    /// If `data` is too short for `layout` (a bug in the caller, never bad input).
    pub fn new(data: &'a [f32], layout: Layout) -> Self {
        assert!(data.len() >= layout.extent(), "matrix: slice too short");
        Matrix { data, layout }
    }

    /// Packs rows `rows` x depth `depth` of this matrix, as A, into panels of MR = `kernel.mr()`
    /// rows: `packed[panel·depth·MR + p·MR + i]`, rows past the end zero.
    fn pack_a(&self, kernel: Kernel, rows: Range<usize>, depth: Range<usize>, packed: &mut [f32]) {
        let Layout {
            row_stride,
            col_stride,
            ..
        } = self.layout;
        let mr = kernel.mr();
        let panel_len = depth.len() * mr;
        for (panel, first) in packed
            .chunks_exact_mut(panel_len)
            .zip(rows.clone().step_by(mr))
        {
            let height = (rows.end - first).min(mr);
            if col_stride == 1 {
                // Rows contiguous along the depth: a transpose.
                if height < mr {
                    panel.fill(0.0);
                }
                #[cfg(target_arch = "x86_64")]
                if pack::has_moves(kernel) {
                    let src = self.data[first * row_stride + depth.start..].as_ptr();
                    // SAFETY: the CPU runs the kernel; the rows lie in the matrix (checked by
                    // Matrix::new) and the panel holds MR floats per depth.
                    unsafe {
                        let dst = panel.as_mut_ptr();
                        pack::transpose(kernel, src, row_stride, height, depth.len(), dst, mr)
                    };
                    continue;
                }
                for i in 0..height {
                    let row = &self.data[(first + i) * row_stride + depth.start..][..depth.len()];
                    for (p, &v) in row.iter().enumerate() {
                        panel[p * mr + i] = v;
                    }
                }
            } else {
                #[cfg(target_arch = "x86_64")]
                if pack::has_moves(kernel) && row_stride == 1 {
                    // Columns contiguous along the rows: each depth's `height` floats are one
                    // run, copied whole.
                    if height < mr {
                        panel.fill(0.0);
                    }
                    let src = self.data[first + depth.start * col_stride..].as_ptr();
                    // SAFETY: the CPU runs the kernel; the runs lie in the matrix (checked by
                    // Matrix::new) and the panel holds MR floats per depth.
                    unsafe {
                        let dst = panel.as_mut_ptr();
                        pack::copy_rows(kernel, src, col_stride, dst, mr, depth.len(), height)
                    };
                    continue;
                }
                for (p, column) in depth.clone().zip(panel.chunks_exact_mut(mr)) {
                    for (i, out) in column.iter_mut().enumerate() {
                        *out = if i < height {
                            self.data[(first + i) * row_stride + p * col_stride]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// A left-hand operand packed once for many products (a convolution's weight, used by every
/// image): every depth block of `depth_blocks`, each as the panels of all its rows, as high as
/// the tile of the kernel it was packed for.
pub struct PackedA {
    data: Vec<f32>,
    layout: Layout,
    kernel: Kernel,
}

impl PackedA {
    /// Packed for the kernel [`Kernel::detect`] picks.
    pub fn new(a: Matrix) -> Self {
        PackedA::for_kernel(Kernel::detect(), a)
    }

    /// Packed for `kernel`, which then is the only one that can multiply it.
    pub fn for_kernel(kernel: Kernel, a: Matrix) -> Self {
        let (m, k) = (a.layout.rows, a.layout.cols);
        let padded_rows = m.next_multiple_of(kernel.mr());
        let mut data = vec![0.0; padded_rows * k];
        for depth in depth_blocks(k) {
            let block = &mut data[depth.start * padded_rows..][..depth.len() * padded_rows];
            a.pack_a(kernel, 0..m, depth, block);
        }
        PackedA {
            data,
            layout: a.layout,
            kernel,
        }
    }

    /// The panels of rows `rows` (starting at a multiple of MR) in the block `depth`.
    fn panels(&self, rows: &Range<usize>, depth: &Range<usize>) -> &[f32] {
        let mr = self.kernel.mr();
        let padded_rows = self.layout.rows.next_multiple_of(mr);
        let block = &self.data[depth.start * padded_rows..][..depth.len() * padded_rows];
        &block[rows.start * depth.len()..][..rows.len().next_multiple_of(mr) * depth.len()]
    }
}

/// The left-hand operand of a product: packed as it goes, or once beforehand.
#[derive(Clone, Copy)]
pub enum A<'a> {
    Matrix(Matrix<'a>),
    Packed(&'a PackedA),
}

impl A<'_> {
    fn layout(&self) -> Layout {
        match self {
            A::Matrix(a) => a.layout,
            A::Packed(a) => a.layout,
        }
    }
}

/// A right-hand operand read in place, unpacked: element (p, j) at `data[rows.offset(p) + j]`.
/// Used only where the last panel's NR floats still lie inside `data` (those past the last
/// column are read, then dropped).
pub struct InPlace<'a> {
    pub data: &'a [f32],
    pub rows: Rows<'a>,
}

/// Where the depth rows of an operand read in place start.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// Row p at `offsets[p]`.
    Offsets(&'a [usize]),
    /// Row p at `p·stride`.
    Stride(usize),
}

impl Rows<'_> {
    /// Where row `r` starts.
    fn offset(&self, r: usize) -> usize {
        match self {
            Rows::Offsets(offsets) => offsets[r],
            Rows::Stride(stride) => r * stride,
        }
    }

    /// Whether there are `k` rows (a stride has any number).
    fn has(&self, k: usize) -> bool {
        match self {
            Rows::Offsets(offsets) => offsets.len() == k,
            Rows::Stride(_) => true,
        }
    }

    /// The offset of the last of `k` rows, the largest for a stride.
    fn last(&self, k: usize) -> usize {
        match self {
            Rows::Offsets(offsets) => offsets.iter().max().copied().unwrap_or(0),
            Rows::Stride(stride) => k.saturating_sub(1) * stride,
        }
    }
}

/// A right-hand operand that packs its own panels.
pub trait PackB: Sync {
    /// Its rows as they lie, when they are contiguous runs the vector tiles can read in place
    /// (copying them into panels would cost more than it saves). None by default.
    fn in_place(&self) -> Option<InPlace<'_>> {
        None
    }

    /// Its panel of depth block `depth` (one of [`depth_blocks`]) at column `col` (a multiple
    /// of NR), where it is already packed ([`Panels`]). None by default.
    fn packed(&self, _depth: &Range<usize>, _col: usize) -> Option<&[f32]> {
        None
    }

    /// (depth, columns).
    fn shape(&self) -> (usize, usize);
    /// Writes `panel[p·NR + j]` = element (depth.start + p, col + j) for `j < width`, zero for
    /// `width ≤ j < NR`, with the vector moves `kernel` allows.
    fn pack_b(
        &self,
        kernel: Kernel,
        depth: Range<usize>,
        col: usize,
        width: usize,
        panel: &mut [f32],
    );
}

impl PackB for Matrix<'_> {
    /// Rows contiguous along the columns (`col_stride` 1) are read where they lie.
    fn in_place(&self) -> Option<InPlace<'_>> {
        (self.layout.col_stride == 1).then_some(InPlace {
            data: self.data,
            rows: Rows::Stride(self.layout.row_stride),
        })
    }

    fn shape(&self) -> (usize, usize) {
        (self.layout.rows, self.layout.cols)
    }

    fn pack_b(
        &self,
        kernel: Kernel,
        depth: Range<usize>,
        col: usize,
        width: usize,
        panel: &mut [f32],
    ) {
        let Layout {
            row_stride,
            col_stride,
            ..
        } = self.layout;
        if col_stride == 1 {
            #[cfg(target_arch = "x86_64")]
            if pack::has_moves(kernel) {
                let src = self.data[depth.start * row_stride + col..].as_ptr();
                // SAFETY: the CPU runs the kernel; the rows lie in the matrix (checked by
                // Matrix::new) and the panel holds NR floats per depth row.
                unsafe {
                    pack::copy_rows(
                        kernel,
                        src,
                        row_stride,
                        panel.as_mut_ptr(),
                        NR,
                        depth.len(),
                        NR.min(width),
                    )
                };
                if width < NR {
                    for out in panel.chunks_exact_mut(NR) {
                        out[width..].fill(0.0);
                    }
                }
                return;
            }
            for (p, out) in depth.zip(panel.chunks_exact_mut(NR)) {
                out[..width].copy_from_slice(&self.data[p * row_stride + col..][..width]);
                out[width..].fill(0.0);
            }
        } else {
            // Columns contiguous along the depth (a transposed operand): a transpose.
            if width < NR {
                panel.fill(0.0);
            }
            #[cfg(target_arch = "x86_64")]
            if pack::has_moves(kernel) && row_stride == 1 {
                let src = self.data[col * col_stride + depth.start..].as_ptr();
                // SAFETY: the CPU runs the kernel; the columns lie in the matrix (checked by
                // Matrix::new) and the panel holds NR floats per depth.
                unsafe {
                    let dst = panel.as_mut_ptr();
                    pack::transpose(kernel, src, col_stride, width, depth.len(), dst, NR)
                };
                return;
            }
            if width < NR {
                panel.fill(0.0);
            }
            for j in 0..width {
                let column = &self.data[(col + j) * col_stride..];
                for (offset, p) in depth.clone().enumerate() {
                    panel[offset * NR + j] = column[p * row_stride];
                }
            }
        }
    }
}

/// A right-hand operand packed once for many products (a Winograd filter, which every image
/// multiplies): for each depth block of [`depth_blocks`], its NR-column panels one after the
/// other, the columns past the last zero. [`gemm_a_in_place`] multiplies the panels where they
/// lie; other products copy them.
pub struct Panels<'a> {
    data: &'a [f32],
    depth: usize,
    cols: usize,
}

impl<'a> Panels<'a> {
    /// Floats of a `depth` x `cols` operand packed.
    pub fn len(depth: usize, cols: usize) -> usize {
        depth * cols.next_multiple_of(NR)
    }

    /// Where element (p, j) of a `depth` x `cols` operand lies once packed.
    pub fn offset(depth: usize, cols: usize, p: usize, j: usize) -> usize {
        let block = depth_blocks(depth)
            .find(|block| block.contains(&p))
            .expect("p < depth");
        let panel = block.len() * NR;
        block.start * cols.next_multiple_of(NR) + j / NR * panel + (p - block.start) * NR + j % NR
    }

    /// # Panics
    /// If `data` is not [`Panels::len`] long (a bug in the caller).
    pub fn new(data: &'a [f32], depth: usize, cols: usize) -> Self {
        assert_eq!(data.len(), Panels::len(depth, cols), "panels: wrong length");
        Panels { data, depth, cols }
    }

    fn panel(&self, depth: &Range<usize>, col: usize) -> &[f32] {
        let block = &self.data[depth.start * self.cols.next_multiple_of(NR)..];
        &block[col / NR * depth.len() * NR..][..depth.len() * NR]
    }
}

impl PackB for Panels<'_> {
    fn packed(&self, depth: &Range<usize>, col: usize) -> Option<&[f32]> {
        Some(self.panel(depth, col))
    }

    fn shape(&self) -> (usize, usize) {
        (self.depth, self.cols)
    }

    fn pack_b(
        &self,
        _kernel: Kernel,
        depth: Range<usize>,
        col: usize,
        _width: usize,
        panel: &mut [f32],
    ) {
        assert!(
            depth_blocks(self.depth).any(|block| block == depth) && col.is_multiple_of(NR),
            "panels: a block they were not packed in"
        );
        panel[..depth.len() * NR].copy_from_slice(self.panel(&depth, col));
    }
}

/// What is added to the product before it is stored: `C = relu?(C? + bias + A·B)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Add the product to what C holds instead of overwriting it.
    pub accumulate: bool,
    /// A value per row of C (a convolution's bias, rows being output channels).
    pub row_bias: Option<&'a [f32]>,
    /// A value per column of C (a linear layer's bias, columns being output features).
    pub col_bias: Option<&'a [f32]>,
    /// Clamp the result at zero.
    pub relu: bool,
}

/// The micro-kernels this build can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx512,
    Avx2Fma,
    Portable,
}

/// The kernel [`Kernel::force`] chose, as its index in [`Kernel::ALL`] + 1; 0 for none.
static FORCED: AtomicUsize = AtomicUsize::new(0);

/// The variable that chooses the cpu device's instruction set (see [`Kernel::from_env`]).
pub const CPU_ISA_VARIABLE: &str = "HANDWRITTEN_CPU_ISA";

impl Kernel {
    const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2Fma, Kernel::Portable];

    /// The kernel every product uses: the one `HANDWRITTEN_CPU_ISA` names, else the fastest this
    /// CPU runs (read once), unless [`Kernel::force`] chose another. A value [`Kernel::from_env`]
    /// refuses leaves the fastest; opening the cpu device reports it.
    pub fn detect() -> Kernel {
        static CHOSEN: OnceLock<Kernel> = OnceLock::new();
        match FORCED.load(Ordering::Relaxed) {
            0 => *CHOSEN.get_or_init(|| Kernel::from_env().unwrap_or(Kernel::available()[0])),
            forced => Kernel::ALL[forced - 1],
        }
    }

    /// The name [`CPU_ISA_VARIABLE`] gives the kernel's instruction set.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2Fma => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// The kernel named `name` (`avx512`, `avx2` or `portable`), where this CPU runs it; the
    /// error names the variable, the value and the names this CPU allows.
    pub fn from_name(name: &str) -> Result<Kernel, String> {
        let allowed = Kernel::available().into_iter().map(Kernel::name);
        let allowed = allowed.collect::<Vec<_>>().join(", ");
        match Kernel::ALL.into_iter().find(|k| k.name() == name) {
            None => Err(format!(
                "{CPU_ISA_VARIABLE}={name}: unknown instruction set; this CPU allows {allowed}"
            )),
            Some(kernel) => kernel.runnable().map_err(|why| {
                format!("{CPU_ISA_VARIABLE}={name}: {why}; this CPU allows {allowed}")
            }),
        }
    }

    /// The kernel `HANDWRITTEN_CPU_ISA` names ([`Kernel::from_name`]), or the fastest this CPU
    /// runs where it is unset.
    pub fn from_env() -> Result<Kernel, String> {
        match std::env::var_os(CPU_ISA_VARIABLE) {
            None => Ok(Kernel::available()[0]),
            Some(value) => Kernel::from_name(&value.to_string_lossy()),
        }
    }

    /// This kernel, where this CPU runs it.
    fn runnable(self) -> Result<Kernel, String> {
        match Kernel::available().contains(&self) {
            true => Ok(self),
            false => Err(format!("this CPU cannot run {}", self.name())),
        }
    }

    /// Makes every later product of the process use `kernel` (`None`: the one [`Kernel::detect`]
    /// picks again), so that the fallbacks, their packing included, can be tested and timed on
    /// a CPU that has better. A kernel this CPU cannot run is refused as [`Kernel::from_name`]
    /// refuses it.
    pub fn force(kernel: Option<Kernel>) -> Result<(), String> {
        let index = match kernel {
            None => 0,
            Some(kernel) => {
                Kernel::from_name(kernel.name())?;
                Kernel::ALL
                    .iter()
                    .position(|&k| k == kernel)
                    .expect("listed")
                    + 1
            }
        };
        FORCED.store(index, Ordering::Relaxed);
        Ok(())
    }

    /// The height of this kernel's tile, and so of its A panels.
    pub fn mr(self) -> usize {
        match self {
            Kernel::Avx2Fma => MR_AVX2,
            Kernel::Avx512 | Kernel::Portable => MR,
        }
    }

    /// Whether this kernel has tiles that read A or B in place ([`gemm_a_in_place`],
    /// [`PackB::in_place`]): the hand-written ones.
    pub(super) fn reads_in_place(self) -> bool {
        matches!(self, Kernel::Avx512 | Kernel::Avx2Fma)
    }

    /// Every kernel this CPU runs, fastest first.
    pub fn available() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(Kernel::Avx2Fma);
            }
        }
        kernels.push(Kernel::Portable);
        kernels
    }

    /// One tile; see [`microkernel::portable_tile`] for the contract.
    unsafe fn tile(self, depth: usize, a: *const f32, b: *const f32, store: Store) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => microkernel::avx512_tile(depth, a, b, store),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => microkernel::avx2_tile(depth, a, b, store),
            _ => microkernel::portable_tile(depth, a, b, store),
        }
    }
}

/// C = relu?(C? + bias + A·B) for C row-major-like (`col_stride` 1) of `c_layout`, with the
/// kernel [`Kernel::detect`] picks, split across the thread pool when large.
pub fn gemm(c: &mut [f32], c_layout: Layout, a: A, b: &impl PackB, epilogue: Epilogue) {
    gemm_with(Kernel::detect(), c, c_layout, a, b, epilogue)
}

/// [`gemm`] with a chosen kernel (which the CPU must run: one of [`Kernel::available`]).
///
/// # Panics
/// If the shapes disagree, a slice is too short, C's columns are not contiguous, or the kernel
/// is not available: all bugs in the caller, never bad input.
pub fn gemm_with(
    kernel: Kernel,
    c: &mut [f32],
    c_layout: Layout,
    a: A,
    b: &impl PackB,
    epilogue: Epilogue,
) {
    multiply(kernel, c, c_layout, (a, b), epilogue, true)
}

/// [`gemm_with`] on the calling thread alone: one image's product, inside a loop that already
/// gives each thread its own images.
pub(super) fn gemm_on_this_thread(
    kernel: Kernel,
    c: &mut [f32],
    c_layout: Layout,
    a: A,
    b: &impl PackB,
    epilogue: Epilogue,
) {
    multiply(kernel, c, c_layout, (a, b), epilogue, false)
}

fn multiply(
    kernel: Kernel,
    c: &mut [f32],
    c_layout: Layout,
    (a, b): (A, &impl PackB),
    epilogue: Epilogue,
    may_split: bool,
) {
    let (m, n, k) = (c_layout.rows, c_layout.cols, a.layout().cols);
    assert!(
        a.layout().rows == m && b.shape() == (k, n),
        "gemm shapes: c {c_layout:?}, a {:?}, b {:?}",
        a.layout(),
        b.shape()
    );
    assert!(
        c_layout.col_stride == 1 || n <= 1,
        "gemm: C's columns must be contiguous"
    );
    assert!(c.len() >= c_layout.extent(), "gemm: c too short");
    assert!(epilogue.row_bias.is_none_or(|bias| bias.len() >= m));
    assert!(epilogue.col_bias.is_none_or(|bias| bias.len() >= n));
    assert!(
        Kernel::available().contains(&kernel),
        "gemm: {kernel:?} unavailable"
    );
    if m == 0 || n == 0 {
        return;
    }
    let product = Product {
        kernel,
        c: c.as_mut_ptr(),
        ldc: c_layout.row_stride,
        a,
        b,
        epilogue,
    };

    let threads = rayon::current_num_threads();
    if threads == 1 || !may_split || 2 * m * n * k < PARALLEL_FLOPS {
        // SAFETY: the whole of C, checked in bounds above.
        return unsafe { product.run(0..m, 0..n) };
    }
    // Split the longer side of C, columns in whole panels, so every thread's tiles are full.
    use rayon::prelude::*;
    let split_rows = m > n;
    let (len, unit) = if split_rows {
        (m, kernel.mr())
    } else {
        (n, NR)
    };
    let units = len.div_ceil(unit);
    let parts = threads.min(units);
    (0..parts).into_par_iter().for_each(|part| {
        let start = (part * units / parts * unit).min(len);
        let end = ((part + 1) * units / parts * unit).min(len);
        // SAFETY: the parts cover disjoint blocks of C, each within the bounds checked above.
        unsafe {
            if split_rows {
                product.run(start..end, 0..n)
            } else {
                product.run(0..m, start..end)
            }
        }
    });
}

/// C (+)= A·B on the calling thread with `kernel`'s tile (one that [`Kernel::reads_in_place`]),
/// A read in place, the product added to C where `accumulate`: row i of A is
/// `a[a_rows.offset(i)..]`, its depth contiguous (a stride-1 convolution's patches, a row per
/// tap; a row-major weight), which packing would have to transpose. A short last panel of rows
/// repeats its first row's pointer; those rows are dropped at the store.
///
/// # Panics
/// If a row's depth runs past `a`, the shapes disagree or C is too short: bugs in the caller.
#[cfg(target_arch = "x86_64")]
pub(super) fn gemm_a_in_place(
    kernel: Kernel,
    c: &mut [f32],
    c_layout: Layout,
    (a, a_rows): (&[f32], Rows),
    b: &impl PackB,
    accumulate: bool,
) {
    let (m, n, ldc) = (c_layout.rows, c_layout.cols, c_layout.row_stride);
    let k = b.shape().0;
    assert!(
        a_rows.has(m) && b.shape().1 == n && c_layout.col_stride == 1,
        "gemm_a_in_place shapes"
    );
    assert!(c.len() >= c_layout.extent(), "gemm: c too short");
    assert!(
        kernel.reads_in_place() && Kernel::available().contains(&kernel),
        "gemm: {kernel:?} cannot read A in place here"
    );
    assert!(
        m == 0 || a_rows.last(m) + k <= a.len(),
        "gemm: A in place too short"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let mr = kernel.mr();
    with_scratch(&PACKED_B, KC * NR, |packed_b| {
        for depth in depth_blocks(k) {
            let packed_b = &mut packed_b[..depth.len() * NR];
            for col in (0..n).step_by(NR) {
                let width = (n - col).min(NR);
                let panel = match b.packed(&depth, col) {
                    Some(panel) => panel,
                    None => {
                        b.pack_b(kernel, depth.clone(), col, width, packed_b);
                        &*packed_b
                    }
                };
                for row in (0..m).step_by(mr) {
                    let height = (m - row).min(mr);
                    let rows = std::array::from_fn(|i| {
                        let r = if i < height { row + i } else { row };
                        a[a_rows.offset(r) + depth.start..].as_ptr()
                    });
                    let store = Store {
                        c: c[row * ldc + col..].as_mut_ptr(),
                        ldc,
                        rows: height,
                        cols: width,
                        // Later depth blocks add to what the first stored.
                        load: accumulate || depth.start > 0,
                        row_bias: std::ptr::null(),
                        col_bias: std::ptr::null(),
                        relu: false,
                    };
                    // SAFETY: the CPU runs the kernel and every row has the block's depth in
                    // `a` (both checked above), the panel holds that depth, and the tile's
                    // corner lies in C.
                    unsafe {
                        let (depth, b) = (depth.len(), panel.as_ptr());
                        match kernel {
                            Kernel::Avx512 => {
                                microkernel::avx512_tile_a_in_place(depth, rows, b, store)
                            }
                            _ => microkernel::avx2_tile_a_in_place(depth, rows, b, store),
                        }
                    }
                }
            }
        }
    })
}

/// The operands of one product, shareable between the threads that compute its parts.
struct Product<'a, B> {
    kernel: Kernel,
    c: *mut f32,
    ldc: usize,
    a: A<'a>,
    b: &'a B,
    epilogue: Epilogue<'a>,
}

// SAFETY: threads given a Product write only disjoint blocks of C (see `gemm_with`).
unsafe impl<B: Sync> Sync for Product<'_, B> {}

impl<B: PackB> Product<'_, B> {
    /// Computes the block C[rows, cols].
    ///
    /// # Safety
    /// C must be valid for its layout and no other thread may touch this block.
    unsafe fn run(&self, rows: Range<usize>, cols: Range<usize>) {
        let k = self.a.layout().cols;
        let e = &self.epilogue;
        if k == 0 {
            // No depth to loop over: the epilogue alone.
            return self.epilogue_only(rows, cols);
        }
        let kc_max = depth_blocks(k).map(|d| d.len()).max().unwrap_or(0);
        let mr = self.kernel.mr();
        // Packed beforehand, A is read from where it lies: one block of all the rows.
        let mc_max = match self.a {
            A::Matrix(_) => A_BLOCK_BYTES / 4 / kc_max / mr * mr,
            A::Packed(a) => {
                assert!(a.kernel == self.kernel, "gemm: A packed for {:?}", a.kernel);
                rows.len()
            }
        }
        .max(mr)
        .min(rows.len().next_multiple_of(mr));
        let scratch_a = match self.a {
            A::Matrix(_) => mc_max * kc_max,
            A::Packed(_) => 0,
        };
        // B in place: only on the hand-written tiles, for at most IN_PLACE_TILES (a stride's:
        // IN_PLACE_STRIDED_TILES) tiles of rows of C, and where every row's last panel (which
        // starts a multiple of NR past the first and reads NR) lies inside the slice; else
        // packed.
        let end = cols.start + (cols.len() - 1) / NR * NR + NR;
        let in_place = self.b.in_place().filter(|b| {
            let most_tiles = match b.rows {
                Rows::Stride(stride) if stride >= PAGE_FLOATS => IN_PLACE_STRIDED_TILES,
                _ => IN_PLACE_TILES,
            };
            let few_rows = rows.len() <= most_tiles * mr;
            let inside = b.rows.last(k) + end <= b.data.len();
            self.kernel.reads_in_place() && few_rows && b.rows.has(k) && inside
        });
        with_scratch(&PACKED_A, scratch_a, |scratch_a| {
            with_scratch(&PACKED_B, KC * NR, |packed_b| {
                for depth in depth_blocks(k) {
                    let (first, last) = (depth.start == 0, depth.end == k);
                    for row_start in rows.clone().step_by(mc_max) {
                        let block = row_start..(row_start + mc_max).min(rows.end);
                        let packed_a = match self.a {
                            A::Matrix(a) => {
                                let len = block.len().next_multiple_of(mr) * depth.len();
                                let packed = &mut scratch_a[..len];
                                a.pack_a(self.kernel, block.clone(), depth.clone(), packed);
                                &*packed
                            }
                            A::Packed(a) => a.panels(&block, &depth),
                        };
                        for col in cols.clone().step_by(NR) {
                            let width = (cols.end - col).min(NR);
                            let packed_b = &mut packed_b[..depth.len() * NR];
                            if in_place.is_none() {
                                self.b
                                    .pack_b(self.kernel, depth.clone(), col, width, packed_b);
                            }
                            let a_panels = packed_a.chunks_exact(depth.len() * mr);
                            for (a_panel, row) in a_panels.zip(block.clone().step_by(mr)) {
                                let store = Store {
                                    c: self.c.add(row * self.ldc + col),
                                    ldc: self.ldc,
                                    rows: (block.end - row).min(mr),
                                    cols: width,
                                    load: !first || e.accumulate,
                                    row_bias: match e.row_bias {
                                        Some(bias) if first => bias[row..].as_ptr(),
                                        _ => std::ptr::null(),
                                    },
                                    col_bias: match e.col_bias {
                                        Some(bias) if first => bias[col..].as_ptr(),
                                        _ => std::ptr::null(),
                                    },
                                    relu: last && e.relu,
                                };
                                let a = a_panel.as_ptr();
                                let depth_len = depth.len();
                                let avx512 = self.kernel == Kernel::Avx512;
                                match in_place
                                    .as_ref()
                                    .map(|b| (b.data.as_ptr().add(col), b.rows))
                                {
                                    #[cfg(target_arch = "x86_64")]
                                    Some((b, Rows::Offsets(offsets))) => {
                                        let offsets = offsets[depth.clone()].as_ptr();
                                        if avx512 {
                                            microkernel::avx512_tile_rows_at(
                                                depth_len, a, b, offsets, store,
                                            )
                                        } else {
                                            microkernel::avx2_tile_rows_at(
                                                depth_len, a, b, offsets, store,
                                            )
                                        }
                                    }
                                    #[cfg(target_arch = "x86_64")]
                                    Some((b, Rows::Stride(stride))) => {
                                        let b = b.add(depth.start * stride);
                                        if avx512 {
                                            microkernel::avx512_tile_strided(
                                                depth_len, a, b, stride, store,
                                            )
                                        } else {
                                            microkernel::avx2_tile_strided(
                                                depth_len, a, b, stride, store,
                                            )
                                        }
                                    }
                                    _ => self.kernel.tile(depth_len, a, packed_b.as_ptr(), store),
                                }
                            }
                        }
                    }
                }
            })
        })
    }

    /// C = relu?(C? + bias) for an empty depth.
    unsafe fn epilogue_only(&self, rows: Range<usize>, cols: Range<usize>) {
        let e = &self.epilogue;
        for i in rows {
            for j in cols.clone() {
                let c = self.c.add(i * self.ldc + j);
                let mut value = if e.accumulate { *c } else { 0.0 };
                value += e.row_bias.map_or(0.0, |bias| bias[i]);
                value += e.col_bias.map_or(0.0, |bias| bias[j]);
                *c = if e.relu { value.max(0.0) } else { value };
            }
        }
    }
}

/// Where [`gemm_bands`] hands each finished band of C, which it never stores.
pub(super) trait BandSink: Sync {
    /// Rows `rows` x columns `cols` of C are being computed: a hint to fetch what
    /// [`BandSink::take`] will read with them.
    fn prefetch(&self, rows: Range<usize>, cols: Range<usize>);
    /// C[rows, cols], `band[i·ld + j]` for row `rows.start + i` and column `cols.start + j`.
    fn take(&self, rows: Range<usize>, cols: Range<usize>, band: &[f32], ld: usize);
}

/// Packed B of one band product's chunk of columns, all depth blocks: small enough to stay in
/// L2 while every band of rows passes over it.
const BAND_B_BYTES: usize = 256 << 10;

/// C = A·B, handed to `sink` one band of MR rows (by a chunk of columns) at a time instead of
/// being stored: an epilogue that reads C once, while it is in L1, then drops it (Adam on a
/// weight gradient, which then never goes to memory). The band of each A panel runs along C's
/// rows, so what `sink` reads and writes alongside is read along rows too.
///
/// The same tiles and the same depth blocks, in the same order per tile, as [`gemm`]: every
/// element of C is the same bits as [`gemm`]'s.
///
/// # Panics
/// If the shapes disagree or the kernel is not available: bugs in the caller.
pub(super) fn gemm_bands(kernel: Kernel, a: Matrix, b: &impl PackB, sink: &impl BandSink) {
    let (m, k) = (a.layout.rows, a.layout.cols);
    let n = b.shape().1;
    assert!(
        b.shape().0 == k,
        "gemm_bands shapes: a {:?}, b {:?}",
        a.layout,
        b.shape()
    );
    assert!(
        Kernel::available().contains(&kernel),
        "gemm: {kernel:?} unavailable"
    );
    if m == 0 || n == 0 {
        return;
    }
    let mr = kernel.mr();
    let threads = rayon::current_num_threads();
    let panels = n.div_ceil(NR);
    let parts = if 2 * m * n * k < PARALLEL_FLOPS {
        1
    } else {
        threads.min(panels)
    };
    // Columns in whole panels per part, as `gemm` splits them.
    let part_cols = |part: usize| {
        (part * panels / parts * NR).min(n)..((part + 1) * panels / parts * NR).min(n)
    };
    let chunk_cols = (BAND_B_BYTES / 4 / k.max(1) / NR).max(1) * NR;
    let blocks: Vec<Range<usize>> = depth_blocks(k).collect();
    let run_part = |cols: Range<usize>| {
        let a_len = m.next_multiple_of(mr) * k;
        with_scratch(&PACKED_A, a_len, |packed_a| {
            // All of A, block after block: each block's panels as `gemm` packs them.
            let mut offsets = Vec::with_capacity(blocks.len());
            let mut at = 0;
            for depth in &blocks {
                let len = m.next_multiple_of(mr) * depth.len();
                a.pack_a(kernel, 0..m, depth.clone(), &mut packed_a[at..at + len]);
                offsets.push(at);
                at += len;
            }
            for chunk in cols.clone().step_by(chunk_cols) {
                let chunk = chunk..(chunk + chunk_cols).min(cols.end);
                let chunk_panels = chunk.len().div_ceil(NR);
                let band_len = mr * chunk.len();
                let b_len = chunk_panels * k * NR;
                with_scratch(&PACKED_B, b_len + band_len, |scratch| {
                    let (packed_b, band) = scratch.split_at_mut(b_len);
                    if blocks.is_empty() {
                        band.fill(0.0); // No depth: the product is zero.
                    }
                    // Panel p of block d at (block start·panels + p·depth)·NR.
                    for depth in &blocks {
                        let block = &mut packed_b[depth.start * chunk_panels * NR..];
                        for (p, col) in chunk.clone().step_by(NR).enumerate() {
                            let width = (chunk.end - col).min(NR);
                            let panel = &mut block[p * depth.len() * NR..][..depth.len() * NR];
                            b.pack_b(kernel, depth.clone(), col, width, panel);
                        }
                    }
                    for row in (0..m).step_by(mr) {
                        let rows = row..(row + mr).min(m);
                        for (p, col) in chunk.clone().step_by(NR).enumerate() {
                            let width = (chunk.end - col).min(NR);
                            for (d, depth) in blocks.iter().enumerate() {
                                let a_panel = &packed_a[offsets[d] + row * depth.len()..];
                                let b_start = (depth.start * chunk_panels + p * depth.len()) * NR;
                                let store = Store {
                                    c: band[col - chunk.start..].as_mut_ptr(),
                                    ldc: chunk.len(),
                                    rows: rows.len(),
                                    cols: width,
                                    load: d > 0,
                                    row_bias: std::ptr::null(),
                                    col_bias: std::ptr::null(),
                                    relu: false,
                                };
                                // SAFETY: the CPU runs the kernel (checked above); both panels
                                // hold the block's depth, and the tile's `rows x width` corner
                                // lies in the band (`ldc` its chunk's width).
                                unsafe {
                                    kernel.tile(
                                        depth.len(),
                                        a_panel.as_ptr(),
                                        packed_b[b_start..].as_ptr(),
                                        store,
                                    )
                                };
                            }
                            sink.prefetch(rows.clone(), col..col + width);
                        }
                        sink.take(rows, chunk.clone(), &band[..], chunk.len());
                    }
                })
            }
        })
    };
    if parts == 1 {
        return run_part(0..n);
    }
    use rayon::prelude::*;
    (0..parts)
        .into_par_iter()
        .for_each(|part| run_part(part_cols(part)));
}
