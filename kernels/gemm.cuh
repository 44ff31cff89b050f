// gemm.cuh: the tile loop every GEMM-shaped kernel shares (conv2d.cu, linear.cu), with two
// engines that multiply the staged slices: fp32 on the SIMT cores (one fmaf per product), or TF32
// on the tensor cores.
//
// A pass computes C[i, j] = Σ_d A(i, d)·B(j, d) for C of m rows and n columns. A and B are
// "views": small structs that say where element (row, d) lives, so an op supplies only its views
// and how a finished element is stored. A block of 256 threads owns a 64x64 tile of C and walks
// the depth in slices of 16:
//   start loading slice s + 1                         (cp.async into the other shared buffer
//                                                      where the view is a plain load and the
//                                                      GPU has cp.async; else into registers)
//   wait for slice s, __syncthreads
//   multiply slice s into the accumulators            (the engine)
//   store the registers of slice s + 1 into the other buffer
//   __syncthreads                                     (slice s's buffer is refilled next)
// so the global loads of the next slice are in flight while this one is multiplied.
//
// Architectures: cp.async and the TF32 mma exist from sm_80 (Ampere) on. Compiled for Turing
// (sm_75) every operand is staged through registers and the TF32 engine is left out, so the
// _tf32 kernels exist only from sm_80 (their files put them under `#if __CUDA_ARCH__ >= 800`).
//
// A long sum over few tiles is split across gridDim.z blocks: split z writes its partial tile to
// parts[z][m][n] and a second kernel (sum_parts) adds the parts in z order, so results never
// depend on timing (no float atomics).

#define GEMM_TILE 64        // rows and columns of C per block
#define GEMM_DEPTH 16       // depth of the operand slices staged in shared memory
#define GEMM_THREADS 256

// ---- The PTX instructions the TF32 engine uses. The emulator's cuda_emulator.h defines the same
// functions for the CPU, so g++ never sees the asm. ------------------------------------------

#ifdef __CUDACC__
#if __CUDA_ARCH__ >= 800
// x rounded to TF32 (10 mantissa bits), to nearest with ties away from zero; the low 13 bits of
// the result are zero.
__device__ __forceinline__ unsigned cvt_rna_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// d = a·b + c for one 16x8x8 tile, a warp-wide instruction; which lane holds which element is the
// PTX ISA's "matrix fragments for mma.m16n8k8" (see Tf32Engine).
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const unsigned a[4],
                                                 const unsigned b[2], const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
}

// Starts copying 4 bytes from global src to shared dst; with src_bytes 0 it writes zeros instead
// (src must still be a valid address). The copy lands at a cp_async_wait.
__device__ __forceinline__ void cp_async_4(float* dst, const float* src, unsigned src_bytes) {
    unsigned shared = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(shared), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

// Closes this thread's uncommitted copies into a group.
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// Waits until at most the `Pending` newest groups are still in flight.
template <int Pending> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(Pending) : "memory");
}
#endif
#endif

// Whether plain-load operands are staged with cp.async (sm_80 on) or through registers.
#if __CUDA_ARCH__ >= 800
#define GEMM_CP_ASYNC 1
#else
#define GEMM_CP_ASYNC 0
#endif

// ---- Staging ----------------------------------------------------------------------------------

// A view declares `depth_contiguous` (consecutive threads then walk the depth, else the rows, so
// that global loads coalesce) and `addressable`: whether each element is a plain load at
// `address(row, d)` (staged with cp.async) rather than computed by `operator()(row, d)` (staged
// through registers, e.g. a convolution's patches with their zero padding).

// The plainest view: an operand stored [rows, depth], row-major.
struct Rows {
    const float* p;
    int depth;
    static constexpr bool depth_contiguous = true, addressable = true;
    __device__ const float* address(int row, int d) const { return &p[row * depth + d]; }
};

// Elements of a 64x16 slice each thread stages.
#define GEMM_STAGED (GEMM_TILE * GEMM_DEPTH / GEMM_THREADS)

// Where element i of this thread's share of a slice lies: row r, depth d within the slice. The
// same for every slice, so whatever a view derives from the row alone stays loop-invariant.
template <typename View> __device__ __forceinline__ void staged_element(int i, int& r, int& d) {
    int e = (int)threadIdx.x + i * GEMM_THREADS;
    d = View::depth_contiguous ? e % GEMM_DEPTH : e / GEMM_TILE;
    r = View::depth_contiguous ? e / GEMM_DEPTH : e % GEMM_TILE;
}

// Brings rows [row0, row0 + 64) x depth [d0, d0 + 16) of an operand into slice[d][r], zero outside
// [rows, depth]: `load` starts it (cp.async copies, or loads into registers), `store` finishes it
// (writes the registers; cp.async copies land at their wait instead).
template <typename View> struct Staging {
    static constexpr bool async = View::addressable && GEMM_CP_ASYNC;
    float values[GEMM_STAGED];

    template <typename Engine>
    __device__ __forceinline__ void load(float (*slice)[GEMM_TILE + Engine::pad], const View& view,
                                         int rows, int depth, int row0, int d0) {
#pragma unroll
        for (int i = 0; i < GEMM_STAGED; ++i) {
            int r, d;
            staged_element<View>(i, r, d);
            int row = row0 + r, k = d0 + d;
            bool inside = row < rows && k < depth;
            if constexpr (async) {
#if GEMM_CP_ASYNC
                // Outside, a zero-filling copy from an address that is certainly valid.
                cp_async_4(&slice[d][Engine::column(d, r)],
                           inside ? view.address(row, k) : view.address(0, 0),
                           inside ? 4u : 0u);
#endif
            } else if constexpr (View::addressable) {
                (void)slice;  // written by store
                values[i] = inside ? *view.address(row, k) : 0.0f;
            } else {
                (void)slice;
                values[i] = inside ? view(row, k) : 0.0f;
            }
        }
    }

    template <typename Engine>
    __device__ __forceinline__ void store(float (*slice)[GEMM_TILE + Engine::pad]) {
        if constexpr (!async) {
#pragma unroll
            for (int i = 0; i < GEMM_STAGED; ++i) {
                int r, d;
                staged_element<View>(i, r, d);
                slice[d][Engine::column(d, r)] = values[i];
            }
        }
    }
};

// cp.async's group bookkeeping, nothing where the GPU has no cp.async.
__device__ __forceinline__ void staging_commit() {
#if GEMM_CP_ASYNC
    cp_async_commit();
#endif
}

// Waits until this thread's copies of every slice but the newest have landed.
__device__ __forceinline__ void staging_wait_all_but_newest() {
#if GEMM_CP_ASYNC
    cp_async_wait<1>();
#endif
}

// This block's share [begin, end) of the depth: part blockIdx.z of gridDim.z, in whole slices.
__device__ __forceinline__ void depth_range(int depth, int& begin, int& end) {
    int slices = (depth + GEMM_DEPTH - 1) / GEMM_DEPTH;
    int slices_per_split = (slices + (int)gridDim.z - 1) / (int)gridDim.z;
    begin = min(depth, (int)blockIdx.z * slices_per_split * GEMM_DEPTH);
    end = min(depth, begin + slices_per_split * GEMM_DEPTH);
}

// ---- Engines: each holds 16 accumulators per thread and multiplies one staged slice --------

// fp32 on the SIMT cores: each step one fused multiply-add (fmaf, rounded once, on the GPU and on
// the emulator alike), in depth order. Thread (tx, ty) of a 16x16 grid
// owns rows ty + 16·i and columns tx + 16·j: a half-warp reads 16 consecutive floats of a B slice
// and stores 16 consecutive elements of a row of C.
struct SimtEngine {
    // +1 keeps the depth-contiguous staging stores, which stride by a row, off a single bank.
    static constexpr int pad = 1;
    // Where element (d, r) of a slice is stored within row d.
    __device__ static __forceinline__ int column(int, int r) { return r; }
    float acc[4][4];

    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
        }
    }

    __device__ __forceinline__ void multiply(const float (*a)[GEMM_TILE + pad],
                                             const float (*b)[GEMM_TILE + pad]) {
        int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
        for (int d = 0; d < GEMM_DEPTH; ++d) {
            float a_frag[4], b_frag[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a_frag[i] = a[d][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b_frag[j] = b[d][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a_frag[i], b_frag[j], acc[i][j]);
            }
        }
    }

    // f(r, c, value) for each accumulator, (r, c) within the tile.
    template <typename F> __device__ __forceinline__ void for_each(F f) const {
        int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) f(ty + 16 * i, tx + 16 * j, acc[i][j]);
        }
    }
};

#if __CUDA_ARCH__ >= 800
// TF32 on the tensor cores. Warp w (of 8) owns rows 16·(w / 2) .. + 16 and columns
// 32·(w % 2) .. + 32 of the tile: four m16n8k8 products per step of 8 along the depth. With
// g = lane / 4 and t = lane % 4, the PTX fragments are
//   a0 = A[g][t]  a1 = A[g + 8][t]  a2 = A[g][t + 4]  a3 = A[g + 8][t + 4]
//   b0 = B[k = t][n = g]  b1 = B[k = t + 4][n = g]
//   c0 = C[g][2t]  c1 = C[g][2t + 1]  c2 = C[g + 8][2t]  c3 = C[g + 8][2t + 1]
// Operands are rounded (cvt.rna) as they leave shared memory; products and sums are fp32.
struct Tf32Engine {
    // Rows of 64 floats, element (d, r) at column r ^ (8·(d % 4) + 2·(d / 4)): an XOR swizzle that
    // puts both access patterns on 32 banks (bank = column % 32, as 64 ≡ 0):
    // - fragment reads, lane (g, t) at row k0 + t (+ 4), column c0 + g: d / 4 is the same for the
    //   four t, so bits 1-2 of the XOR only permute g, and bits 3-4 (8·t) set each t's 8 banks;
    // - depth-contiguous staging stores, lane l at row l % 16, column r0 + l / 16 (r0 even): the
    //   16 rows give 16 values of bits 1-4, the two columns bit 0;
    // - row-contiguous stores (32 consecutive columns of one row) XOR a constant: a permutation.
    // Unswizzled, rows of 72 (8 mod 32 banks apart) served the reads but stored depth-contiguous
    // views 4-way conflicted.
    static constexpr int pad = 0;
    __device__ static __forceinline__ int column(int d, int r) {
        return r ^ (8 * (d % 4) + 2 * (d / 4));
    }
    float acc[4][4];  // [n-tile j][c register]

    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
        }
    }

    __device__ __forceinline__ void multiply(const float (*a)[GEMM_TILE + pad],
                                             const float (*b)[GEMM_TILE + pad]) {
        int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        int g = lane / 4, t = lane % 4;
        int m0 = 16 * (warp / 2), n0 = 32 * (warp % 2);
#pragma unroll
        for (int k0 = 0; k0 < GEMM_DEPTH; k0 += 8) {
            int k = k0 + t, k4 = k0 + t + 4;
            unsigned a_frag[4] = {cvt_rna_tf32(a[k][column(k, m0 + g)]),
                                  cvt_rna_tf32(a[k][column(k, m0 + g + 8)]),
                                  cvt_rna_tf32(a[k4][column(k4, m0 + g)]),
                                  cvt_rna_tf32(a[k4][column(k4, m0 + g + 8)])};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                int n = n0 + 8 * j + g;
                unsigned b_frag[2] = {cvt_rna_tf32(b[k][column(k, n)]),
                                      cvt_rna_tf32(b[k4][column(k4, n)])};
                mma_m16n8k8_tf32(acc[j], a_frag, b_frag, acc[j]);
            }
        }
    }

    template <typename F> __device__ __forceinline__ void for_each(F f) const {
        int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        int g = lane / 4, t = lane % 4;
        int m0 = 16 * (warp / 2), n0 = 32 * (warp % 2);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                f(m0 + g + 8 * (i / 2), n0 + 8 * j + 2 * t + i % 2, acc[j][i]);
            }
        }
    }
};
#endif

// ---- The tile loop ----------------------------------------------------------------------------

// Computes this block's tile of C[i, j] = Σ_d A(i, d)·B(j, d) over its share of the depth and
// hands each element inside C to store(row, col, value); a split's partial sums go to
// parts[blockIdx.z][m][n] instead. Every thread of the block must call it (it has barriers).
template <typename Engine, typename A, typename B, typename Store>
__device__ __forceinline__ void gemm_tile(const A& a, const B& b, int m, int n, int depth,
                                          float* parts, Store store) {
    constexpr int pad = Engine::pad;
    __shared__ float a_slices[2][GEMM_DEPTH][GEMM_TILE + pad];
    __shared__ float b_slices[2][GEMM_DEPTH][GEMM_TILE + pad];
    int row0 = blockIdx.y * GEMM_TILE, col0 = blockIdx.x * GEMM_TILE;
    Engine engine;
    engine.zero();
    int begin, end;
    depth_range(depth, begin, end);
    Staging<A> a_staging;
    Staging<B> b_staging;
    if (begin < end) {
        a_staging.template load<Engine>(a_slices[0], a, m, depth, row0, begin);
        b_staging.template load<Engine>(b_slices[0], b, n, depth, col0, begin);
        a_staging.template store<Engine>(a_slices[0]);
        b_staging.template store<Engine>(b_slices[0]);
    }
    staging_commit();
    for (int d0 = begin, s = 0; d0 < end; d0 += GEMM_DEPTH, s ^= 1) {
        bool next = d0 + GEMM_DEPTH < end;
        if (next) {
            a_staging.template load<Engine>(a_slices[s ^ 1], a, m, depth, row0, d0 + GEMM_DEPTH);
            b_staging.template load<Engine>(b_slices[s ^ 1], b, n, depth, col0, d0 + GEMM_DEPTH);
        }
        staging_commit();               // possibly empty: one group per step keeps counts simple
        staging_wait_all_but_newest();  // this step's slice has landed (the next may be in flight)
        __syncthreads();                // ... for every thread's copies, not only this one's
        engine.multiply(a_slices[s], b_slices[s]);
        if (next) {
            // Buffer s ^ 1 was last read before the previous step's closing barrier.
            a_staging.template store<Engine>(a_slices[s ^ 1]);
            b_staging.template store<Engine>(b_slices[s ^ 1]);
        }
        __syncthreads();                // the buffer just read is refilled next step
    }
    bool split = gridDim.z > 1;
    engine.for_each([&](int r, int c, float value) {
        int row = row0 + r, col = col0 + c;
        if (row >= m || col >= n) return;
        if (split) {
            parts[((size_t)blockIdx.z * m + row) * n + col] = value;
        } else {
            store(row, col, value);
        }
    });
}

// The second pass of a split sum: store(row, col, Σ_z parts[z][row][col]), the parts added in z
// order. One thread per element of C, in a 1-D grid.
template <typename Store>
__device__ __forceinline__ void sum_parts(const float* parts, int splits, int m, int n,
                                          Store store) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= m * n) return;
    float sum = parts[e];
    for (int z = 1; z < splits; ++z) sum += parts[(size_t)z * m * n + e];
    store(e / n, e % n, sum);
}
