// gemm_lab.cu: the GEMM kernel's history, kept runnable. Each step computes the same product
//   C[i, j] = Σ_d A[i, d]·B[j, d]    (C = A·Bᵀ; A [m, k], B [n, k], C [m, n], row-major)
// so that tests/gemm_lab.rs holds every step to the reference and `cargo bench --bench ops --
// gemm_lab` times them side by side. docs/gemm.md says what each step buys and why.
//   gemm_lab_naive  one thread per element of C, reading A and B from global memory
//   gemm_lab_tiled  16x16 tiles of A and B staged in shared memory, one element per thread
//   gemm_lab_simt   gemm.cuh's tile loop on the SIMT engine: 64x64 tiles, a 4x4 register
//                   micro-tile per thread, double-buffered staging (cp.async from sm_80 on,
//                   else through registers), one fmaf per product
//   gemm_lab_tf32   the same loop on the tensor-core engine (mma.sync m16n8k8, TF32 operands)
// The last two are the production engines that conv2d.cu and linear.cu run, here on plain
// row-major operands.

#include "gemm.cuh"

#define LAB_TILE 16

// Thread (x, y) of a 2-D grid of 16x16 blocks computes C[y][x] with a dot product straight from
// global memory: 2k loads for 2k flops. A warp (two rows of 16 threads) reads two floats of A,
// each broadcast to 16 threads, and 16 floats of B that lie k floats apart: 16 separate memory
// transactions per step of d, and each float of B is read again by every row of blocks.
extern "C" __global__ void gemm_lab_naive(const float* a, const float* b, float* c, int m, int n,
                                          int k) {
    int row = blockIdx.y * LAB_TILE + threadIdx.y, col = blockIdx.x * LAB_TILE + threadIdx.x;
    if (row >= m || col >= n) return;
    float sum = 0.0f;
    for (int d = 0; d < k; ++d) sum += a[row * k + d] * b[col * k + d];
    c[row * n + col] = sum;
}

// The block's 16x16 threads load a 16x16 tile of A's rows and of B's rows, 16 deep, once into
// shared memory (consecutive threads read consecutive floats: coalesced), then each thread reads
// its row and column 16 times from there: global loads per flop fall 16-fold. B's tile is padded
// to 17 columns: thread x reads b_tile[x][d], and a stride of 17 puts the 16 threads of a
// half-warp on 16 different banks.
extern "C" __global__ void gemm_lab_tiled(const float* a, const float* b, float* c, int m, int n,
                                          int k) {
    __shared__ float a_tile[LAB_TILE][LAB_TILE];
    __shared__ float b_tile[LAB_TILE][LAB_TILE + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int row0 = blockIdx.y * LAB_TILE, col0 = blockIdx.x * LAB_TILE;
    float sum = 0.0f;
    for (int d0 = 0; d0 < k; d0 += LAB_TILE) {
        // Thread (x, y) stages depth d0 + x of row y of each tile; zero past the edges.
        int d = d0 + tx;
        a_tile[ty][tx] = row0 + ty < m && d < k ? a[(row0 + ty) * k + d] : 0.0f;
        b_tile[ty][tx] = col0 + ty < n && d < k ? b[(col0 + ty) * k + d] : 0.0f;
        __syncthreads();
        for (int j = 0; j < LAB_TILE; ++j) sum += a_tile[ty][j] * b_tile[tx][j];
        __syncthreads();  // the tiles are overwritten next step
    }
    if (row0 + ty < m && col0 + tx < n) c[(row0 + ty) * n + col0 + tx] = sum;
}

// The production tile loop on plain operands. Grid: (⌈n / 64⌉, ⌈m / 64⌉) blocks of 256 threads.
template <typename Engine>
__device__ __forceinline__ void lab_gemm(const float* a, const float* b, float* c, int m, int n,
                                         int k) {
    gemm_tile<Engine>(Rows{a, k}, Rows{b, k}, m, n, k, nullptr,
                      [&](int row, int col, float value) { c[row * n + col] = value; });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_lab_simt(const float* a, const float* b, float* c, int m, int n, int k) {
    lab_gemm<SimtEngine>(a, b, c, m, n, k);
}

#if __CUDA_ARCH__ >= 800
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_lab_tf32(const float* a, const float* b, float* c, int m, int n, int k) {
    lab_gemm<Tf32Engine>(a, b, c, m, n, k);
}
#endif
