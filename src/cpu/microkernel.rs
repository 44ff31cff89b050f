//! The GEMM's innermost loop: one MR x NR tile of C from a packed A panel and a packed B panel.
//!
//! A panel holds MR rows of A depth-major (`a[p·MR + i]`), a B panel NR columns of B depth-major
//! (`b[p·NR + j]`), both zero-padded to full width, so the loop over depth has no edges. The
//! tile is kept in registers for the whole depth and written once, through [`Store`], which also
//! applies the epilogue (accumulate, bias, ReLU). Only the `rows x cols` corner that lies inside
//! C is written.
//!
//! Each instruction set has its own tile shaped for its registers: AVX-512's 8 x 32 in 32 zmm
//! registers, AVX2's 6 x 32 (two halves of 6 x 16) in 16 ymm ones, so A panels are as high as
//! the kernel's tile ([`MR`] or [`MR_AVX2`]); B panels are NR wide for all.

/// Rows of a tile (AVX-512 and portable): broadcast from A.
pub const MR: usize = 8;
/// Columns of a tile: two 16-float AVX-512 vectors of B.
pub const NR: usize = 32;

/// Where a finished tile goes and how it meets C there:
/// `c = relu?(load·c + row_bias[i] + col_bias[j] + tile)` for the `rows x cols` corner.
#[derive(Clone, Copy)]
pub struct Store {
    /// The tile's first element in C, whose rows lie `ldc` apart.
    pub c: *mut f32,
    pub ldc: usize,
    /// How much of the tile lies inside C: at most MR and NR.
    pub rows: usize,
    pub cols: usize,
    /// Add the tile to what C holds (false: overwrite it).
    pub load: bool,
    /// A value per tile row to add, or null.
    pub row_bias: *const f32,
    /// A value per tile column to add, or null.
    pub col_bias: *const f32,
    pub relu: bool,
}

/// The portable tile: plain loops the compiler vectorises for whatever the target offers, in
/// quarter tiles of MR/2 x NR/2 that fit 16 vector registers.
///
/// # Safety
/// `a` and `b` must hold `depth` packed rows; `store.c` must be valid for `rows x cols` at row
/// stride `ldc` (rows ≤ MR, cols ≤ NR), and the biases, when not null, for `rows` and `cols`
/// values.
#[inline(always)]
pub unsafe fn portable_tile(depth: usize, a: *const f32, b: *const f32, store: Store) {
    let Store {
        c, ldc, rows, cols, ..
    } = store;
    const QR: usize = MR / 2;
    const QC: usize = NR / 2;
    for (row0, col0) in [(0, 0), (0, QC), (QR, 0), (QR, QC)] {
        if row0 >= rows || col0 >= cols {
            continue;
        }
        let mut acc = [[0.0f32; QC]; QR];
        for p in 0..depth {
            let b_row = std::slice::from_raw_parts(b.add(p * NR + col0), QC);
            let a_col = std::slice::from_raw_parts(a.add(p * MR + row0), QR);
            for (acc_row, &a) in acc.iter_mut().zip(a_col) {
                for (sum, &b) in acc_row.iter_mut().zip(b_row) {
                    *sum += a * b;
                }
            }
        }
        for (i, acc_row) in acc.iter().enumerate().take(rows - row0) {
            let (i, row) = (row0 + i, c.add((row0 + i) * ldc));
            for (j, &sum) in acc_row.iter().enumerate().take(cols - col0) {
                let j = col0 + j;
                let mut value = sum;
                if store.load {
                    value += *row.add(j);
                }
                if !store.row_bias.is_null() {
                    value += *store.row_bias.add(i);
                }
                if !store.col_bias.is_null() {
                    value += *store.col_bias.add(j);
                }
                if store.relu {
                    value = value.max(0.0);
                }
                *row.add(j) = value;
            }
        }
    }
}

/// Rows of an AVX2 tile: 6 rows x 2 eight-float vectors = 12 accumulators, which with the two
/// vectors of B and a broadcast of A take 15 of the 16 ymm registers. Its A panels are this
/// many rows high; its B panels are NR wide like the others, computed as two halves of 16.
pub const MR_AVX2: usize = 6;

/// The AVX2 tile: for each 16-column half of the panel, 6 rows x 2 vectors = 12 accumulators,
/// each depth step two loads of B, six broadcasts of A and twelve FMAs (Zen 3's two FMA pipes at
/// four cycles' latency want at least eight chains in flight). Columns past `cols` are masked
/// off at the store, and a half wholly past them is not computed.
///
/// # Safety
/// As [`portable_tile`], with A panels of [`MR_AVX2`] rows; the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_tile(depth: usize, a: *const f32, b: *const f32, store: Store) {
    avx2_tile_rows(
        depth,
        |p, i| *a.add(p * MR_AVX2 + i),
        |p| b.add(p * NR),
        store,
    )
}

/// [`avx2_tile`] on an A read in place: row i's depth runs from `a_rows[i]` on, contiguous;
/// only the first [`MR_AVX2`] pointers are read.
///
/// # Safety
/// As [`avx512_tile_a_in_place`]; the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_tile_a_in_place(
    depth: usize,
    a_rows: [*const f32; MR],
    b: *const f32,
    store: Store,
) {
    avx2_tile_rows(depth, |p, i| *a_rows[i].add(p), |p| b.add(p * NR), store)
}

/// [`avx2_tile`] on a B read in place: depth row p's NR columns start at `b + offsets[p]`.
///
/// # Safety
/// As [`avx512_tile_rows_at`]; the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_tile_rows_at(
    depth: usize,
    a: *const f32,
    b: *const f32,
    offsets: *const usize,
    store: Store,
) {
    avx2_tile_rows(
        depth,
        |p, i| *a.add(p * MR_AVX2 + i),
        |p| b.add(*offsets.add(p)),
        store,
    )
}

/// [`avx2_tile`] on a B read in place: depth row p's NR columns start at `b + p·stride`.
///
/// # Safety
/// As [`avx2_tile_rows_at`], for the offsets `p·stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_tile_strided(
    depth: usize,
    a: *const f32,
    b: *const f32,
    stride: usize,
    store: Store,
) {
    avx2_tile_rows(
        depth,
        |p, i| *a.add(p * MR_AVX2 + i),
        |p| b.add(p * stride),
        store,
    )
}

/// The AVX2 tile with A's element (i, p) `a_at(p, i)` and B's depth row p at `b_row(p)`.
///
/// A tile of C's last rows computes only the rows it stores, rounded up to a pair: M = 64 is
/// ten tiles of 6 and one of 4, M = 32 five of 6 and one of 2, where a full tile would spend a
/// third or two thirds of its FMAs on rows that are dropped.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_tile_rows(
    depth: usize,
    a_at: impl Fn(usize, usize) -> f32,
    b_row: impl Fn(usize) -> *const f32,
    store: Store,
) {
    match store.rows {
        0..=2 => avx2_tile_first_rows::<2>(depth, a_at, b_row, store),
        3..=4 => avx2_tile_first_rows::<4>(depth, a_at, b_row, store),
        _ => avx2_tile_first_rows::<MR_AVX2>(depth, a_at, b_row, store),
    }
}

/// [`avx2_tile_rows`] on the tile's first `ROWS` rows (`store.rows ≤ ROWS ≤ MR_AVX2`).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_tile_first_rows<const ROWS: usize>(
    depth: usize,
    a_at: impl Fn(usize, usize) -> f32,
    b_row: impl Fn(usize) -> *const f32,
    store: Store,
) {
    use std::arch::x86_64::*;
    let Store {
        c, ldc, rows, cols, ..
    } = store;
    for col0 in (0..cols).step_by(16) {
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        for p in 0..depth {
            let b = b_row(p).add(col0);
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_ps(a_at(p, i));
                acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
            }
        }
        for h in 0..2 {
            let from = col0 + 8 * h;
            let width = cols.saturating_sub(from).min(8);
            if width == 0 {
                continue;
            }
            // Lane l is kept where l < width; a full vector takes plain moves (AMD's masked
            // stores are slow).
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(width as i32), lanes);
            let full = width == 8;
            let load = |src: *const f32| {
                if full {
                    _mm256_loadu_ps(src)
                } else {
                    _mm256_maskload_ps(src, mask)
                }
            };
            let col_bias = if store.col_bias.is_null() {
                _mm256_setzero_ps()
            } else {
                load(store.col_bias.add(from))
            };
            for (i, acc) in acc.iter().enumerate().take(rows) {
                let dst = c.add(i * ldc + from);
                let row_bias = if store.row_bias.is_null() {
                    _mm256_setzero_ps()
                } else {
                    _mm256_set1_ps(*store.row_bias.add(i))
                };
                let mut value = _mm256_add_ps(acc[h], _mm256_add_ps(row_bias, col_bias));
                if store.load {
                    value = _mm256_add_ps(value, load(dst));
                }
                if store.relu {
                    value = _mm256_max_ps(value, _mm256_setzero_ps());
                }
                if full {
                    _mm256_storeu_ps(dst, value);
                } else {
                    _mm256_maskstore_ps(dst, mask, value);
                }
            }
        }
    }
}

/// The AVX-512 tile: 8 rows x 2 vectors = 16 accumulators, each depth step two loads of B, eight
/// broadcasts of A and sixteen FMAs. Columns past `cols` are masked off at the store.
///
/// # Safety
/// As [`portable_tile`]; the CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn avx512_tile(depth: usize, a: *const f32, b: *const f32, store: Store) {
    avx512_tile_rows(depth, |p, i| *a.add(p * MR + i), |p| b.add(p * NR), store)
}

/// [`avx512_tile`] on an A read in place: row i's depth runs from `a_rows[i]` on, contiguous.
///
/// # Safety
/// As [`portable_tile`], with `depth` floats readable from each of the MR row pointers (rows
/// past `store.rows` may repeat any readable row: they are computed, then dropped).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn avx512_tile_a_in_place(
    depth: usize,
    a_rows: [*const f32; MR],
    b: *const f32,
    store: Store,
) {
    avx512_tile_rows(depth, |p, i| *a_rows[i].add(p), |p| b.add(p * NR), store)
}

/// [`avx512_tile`] on a B read in place: depth row p's NR columns start at `b + offsets[p]`.
///
/// # Safety
/// As [`portable_tile`], but with `offsets` valid for `depth` values and NR floats readable at
/// `b + offsets[p]` for every p (the columns past `store.cols` are read, then dropped).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn avx512_tile_rows_at(
    depth: usize,
    a: *const f32,
    b: *const f32,
    offsets: *const usize,
    store: Store,
) {
    avx512_tile_rows(
        depth,
        |p, i| *a.add(p * MR + i),
        |p| b.add(*offsets.add(p)),
        store,
    )
}

/// [`avx512_tile`] on a B read in place: depth row p's NR columns start at `b + p·stride`.
///
/// # Safety
/// As [`avx512_tile_rows_at`], for the offsets `p·stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn avx512_tile_strided(
    depth: usize,
    a: *const f32,
    b: *const f32,
    stride: usize,
    store: Store,
) {
    avx512_tile_rows(
        depth,
        |p, i| *a.add(p * MR + i),
        |p| b.add(p * stride),
        store,
    )
}

/// The AVX-512 tile with A's element (i, p) `a_at(p, i)` and B's depth row p at `b_row(p)`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_tile_rows(
    depth: usize,
    a_at: impl Fn(usize, usize) -> f32,
    b_row: impl Fn(usize) -> *const f32,
    store: Store,
) {
    use std::arch::x86_64::*;
    let Store {
        c, ldc, rows, cols, ..
    } = store;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..depth {
        let b = b_row(p);
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for (i, acc) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(a_at(p, i));
            acc[0] = _mm512_fmadd_ps(a, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(a, b1, acc[1]);
        }
    }
    let mask = |from: usize| -> __mmask16 {
        let n = cols.saturating_sub(from).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    let masks = [mask(0), mask(16)];
    let col_bias = if store.col_bias.is_null() {
        [_mm512_setzero_ps(); 2]
    } else {
        [0, 1].map(|h| _mm512_maskz_loadu_ps(masks[h], store.col_bias.add(16 * h)))
    };
    for (i, acc) in acc.iter().enumerate().take(rows) {
        let row = c.add(i * ldc);
        let row_bias = if store.row_bias.is_null() {
            _mm512_setzero_ps()
        } else {
            _mm512_set1_ps(*store.row_bias.add(i))
        };
        for h in 0..2 {
            if masks[h] == 0 {
                continue;
            }
            let dst = row.add(16 * h);
            let mut value = _mm512_add_ps(acc[h], _mm512_add_ps(row_bias, col_bias[h]));
            if store.load {
                value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(masks[h], dst));
            }
            if store.relu {
                value = _mm512_max_ps(value, _mm512_setzero_ps());
            }
            _mm512_mask_storeu_ps(dst, masks[h], value);
        }
    }
}
