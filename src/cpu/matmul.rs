//! Matrix products through the `gemm` crate, whose arbitrary strides make every transpose free.

use gemm::{gemm, Parallelism};

/// Where an m×n matrix's elements lie in its slice: element (i, j) at `i·row_stride + j·col_stride`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
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

/// Below this many flops a product runs on one thread: splitting it costs more than it saves.
const PARALLEL_FLOPS: usize = 1 << 21;

/// dst = a·b, or dst += a·b when `accumulate`. Products big enough are split across the thread
/// pool along dst's longer side, each part a single-threaded GEMM; a product asked for from
/// inside the pool (one image of a convolution) stays on its thread, which is already one of many.
pub(super) fn matmul(
    dst: &mut [f32],
    dst_layout: Layout,
    accumulate: bool,
    (a, a_layout): (&[f32], Layout),
    (b, b_layout): (&[f32], Layout),
) {
    let (m, n, k) = (dst_layout.rows, dst_layout.cols, a_layout.cols);
    assert!(
        a_layout.rows == m && b_layout.rows == k && b_layout.cols == n,
        "matmul shapes: dst {dst_layout:?}, a {a_layout:?}, b {b_layout:?}"
    );
    // The bounds every raw-pointer access below relies on.
    assert!(dst.len() >= dst_layout.extent(), "matmul: dst too short");
    assert!(a.len() >= a_layout.extent(), "matmul: a too short");
    assert!(b.len() >= b_layout.extent(), "matmul: b too short");
    if m == 0 || n == 0 {
        return;
    }

    let threads = rayon::current_num_threads();
    let product = Product {
        dst: dst.as_mut_ptr(),
        dst_layout,
        accumulate,
        a: a.as_ptr(),
        a_layout,
        b: b.as_ptr(),
        b_layout,
    };
    let inside_pool = rayon::current_thread_index().is_some();
    if threads == 1 || inside_pool || 2 * m * n * k < PARALLEL_FLOPS {
        // SAFETY: the whole product, checked in bounds above.
        unsafe { product.run(0..m, 0..n) };
        return;
    }
    use rayon::prelude::*;
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let parts = threads.min(len);
    (0..parts).into_par_iter().for_each(|part| {
        let range = part * len / parts..(part + 1) * len / parts;
        // SAFETY: the parts cover disjoint blocks of dst, each within the bounds checked above.
        unsafe {
            if split_rows {
                product.run(range, 0..n)
            } else {
                product.run(0..m, range)
            }
        }
    });
}

/// The raw operands of one product, shareable between the threads that compute its parts.
#[derive(Clone, Copy)]
struct Product {
    dst: *mut f32,
    dst_layout: Layout,
    accumulate: bool,
    a: *const f32,
    a_layout: Layout,
    b: *const f32,
    b_layout: Layout,
}

// SAFETY: threads given a Product write only disjoint blocks of dst (see `matmul`).
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

impl Product {
    /// Computes the block dst[rows, cols] = a[rows, :]·b[:, cols].
    ///
    /// # Safety
    /// The pointers must be valid for their layouts and no other thread may touch this block.
    unsafe fn run(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        let (d, a, b) = (self.dst_layout, self.a_layout, self.b_layout);
        let dst = self
            .dst
            .add(rows.start * d.row_stride + cols.start * d.col_stride);
        let lhs = self.a.add(rows.start * a.row_stride);
        let rhs = self.b.add(cols.start * b.col_stride);
        gemm(
            rows.len(),
            cols.len(),
            a.cols,
            dst,
            d.col_stride as isize,
            d.row_stride as isize,
            self.accumulate,
            lhs,
            a.col_stride as isize,
            a.row_stride as isize,
            rhs,
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
