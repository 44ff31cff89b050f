// Kernels that exercise the CUDA features the emulator implements, one feature each. They are
// no part of training: tests/device_runtime.rs runs them on the emulator in CI and on the GPU in
// scripts/gpu-check.sh, so both executors are held to the same results.

// sums[b] = the sum of block b's elements of x, by a tree reduction in static shared memory
// (blockDim.x a power of two, at most 1024).
extern "C" __global__ void selftest_block_sum(const float* __restrict__ x, float* __restrict__ sums,
                                              unsigned n) {
    __shared__ float partial[1024];
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    partial[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) sums[blockIdx.x] = partial[0];
}

// sums[w] = the sum of the 32 elements of warp w, by __shfl_down_sync; every lane's out[i] = the
// same warp's maximum, by __shfl_xor_sync (a butterfly, so every lane ends with it).
extern "C" __global__ void selftest_warp_reduce(const float* __restrict__ x, float* __restrict__ sums,
                                                float* __restrict__ maxima, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    float value = i < n ? x[i] : 0.0f;
    float sum = value;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    float largest = i < n ? value : __int_as_float(0xff800000);
    for (int mask = 16; mask > 0; mask /= 2) {
        largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, mask));
    }
    // A warp wholly past n (the grid is rounded up to whole blocks) has no sum to write.
    if (threadIdx.x % 32 == 0 && i < n) sums[i / 32] = sum;
    if (i < n) maxima[i] = largest;
}

// Each lane's view of its neighbours through every shuffle flavour, plus a ballot, on int data:
// out[6 i + k] for k = shfl(lane 3), shfl(lane 3 of 8-lane segments), shfl_up(1),
// shfl_down(2, width 16), shfl_xor(5, width 8), ballot(x odd).
extern "C" __global__ void selftest_shuffles(const int* __restrict__ x, int* __restrict__ out) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = x[i];
    const unsigned all = 0xffffffffu;
    out[6 * i + 0] = __shfl_sync(all, v, 3);
    out[6 * i + 1] = __shfl_sync(all, v, 3, 8);
    out[6 * i + 2] = __shfl_up_sync(all, v, 1);
    out[6 * i + 3] = __shfl_down_sync(all, v, 2, 16);
    out[6 * i + 4] = __shfl_xor_sync(all, v, 5, 8);
    out[6 * i + 5] = (int)__ballot_sync(all, v & 1);
}

// y = x with each block's elements reversed, staged through dynamic shared memory
// (shared_bytes = blockDim.x * 4, n a multiple of blockDim.x).
extern "C" __global__ void selftest_reverse_blocks(const float* __restrict__ x, float* __restrict__ y) {
    extern __shared__ float staged[];
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    staged[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = staged[blockDim.x - 1 - threadIdx.x];
}

// bins[v % bin_count] counts the values v; total[0] += x; largest[0] = max of (int)x.
extern "C" __global__ void selftest_atomics(const unsigned* __restrict__ values, const float* __restrict__ x,
                                            unsigned* __restrict__ bins, float* __restrict__ total,
                                            int* __restrict__ largest, unsigned bin_count, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&bins[values[i] % bin_count], 1u);
    atomicAdd(total, x[i]);
    atomicMax(largest, (int)x[i]);
}

// Every thread of a 3-D grid of 3-D blocks writes its coordinates (threadIdx, blockIdx) to
// out[6 g .. 6 g + 6], g its global index with x fastest, so a test sees each ran exactly once.
extern "C" __global__ void selftest_coordinates(unsigned* __restrict__ out) {
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned g = block * blockDim.x * blockDim.y * blockDim.z + thread;
    out[6 * g + 0] = threadIdx.x;
    out[6 * g + 1] = threadIdx.y;
    out[6 * g + 2] = threadIdx.z;
    out[6 * g + 3] = blockIdx.x;
    out[6 * g + 4] = blockIdx.y;
    out[6 * g + 5] = blockIdx.z;
}

// c[m x n] = a[m x k] · b[k x n], 16x16 tiles in shared memory, a 2-D grid of 16x16 blocks:
// barriers inside a loop, the pattern of every tiled kernel.
extern "C" __global__ void selftest_matmul(const float* __restrict__ a, const float* __restrict__ b,
                                           float* __restrict__ c, unsigned m, unsigned n, unsigned k) {
    __shared__ float a_tile[16][16];
    __shared__ float b_tile[16][16];
    unsigned row = blockIdx.y * 16 + threadIdx.y;
    unsigned col = blockIdx.x * 16 + threadIdx.x;
    float acc = 0.0f;
    for (unsigned t = 0; t < k; t += 16) {
        a_tile[threadIdx.y][threadIdx.x] = row < m && t + threadIdx.x < k ? a[row * k + t + threadIdx.x] : 0.0f;
        b_tile[threadIdx.y][threadIdx.x] = col < n && t + threadIdx.y < k ? b[(t + threadIdx.y) * n + col] : 0.0f;
        __syncthreads();
        for (unsigned j = 0; j < 16; ++j) acc += a_tile[threadIdx.y][j] * b_tile[j][threadIdx.x];
        __syncthreads();
    }
    if (row < m && col < n) c[row * n + col] = acc;
}

// Deliberately wrong, for the emulator's diagnosis only (a GPU would hang): lane 0 of the warp
// waits at __syncthreads while the other lanes wait for it in a shuffle.
extern "C" __global__ void selftest_divergent_barrier(float* __restrict__ out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x == 0) {
        __syncthreads();
    } else {
        v += __shfl_down_sync(0xffffffffu, v, 1);
    }
    out[threadIdx.x] = v;
}

// Deliberately wrong, for the emulator only (garbage on a GPU): each block reads its static shared
// memory before writing it, in the declaration forms the kernels use (an aligned array of two
// dimensions inside a template, a scalar), then writes it for the next block to find:
// out[33 b + i] = tile[i / 16][i % 16] for i < 32, and out[33 b + 32] = scale. The emulator
// fills static shared memory with NaN at the start of every block, so every output is NaN there.
template <int Rows> __device__ void read_before_write(float* out) {
    __shared__ __align__(16) float tile[Rows][16];
    __shared__ float scale;
    unsigned i = threadIdx.x, first = blockIdx.x * (Rows * 16 + 1);
    out[first + i] = tile[i / 16][i % 16];
    if (i == 0) out[first + Rows * 16] = scale;
    __syncthreads();
    tile[i / 16][i % 16] = (float)i;
    scale = 1.0f;
}

extern "C" __global__ void selftest_shared_read_before_write(float* __restrict__ out) {
    read_before_write<2>(out);
}

// The tensor-core and cp.async wrappers of the GEMM kernels, which exist from sm_80 on.
#include "gemm.cuh"

#if __CUDA_ARCH__ >= 800

// One mma.sync m16n8k8 TF32 by one warp: D = A·B + C with A [16][8], B [8][8] (k, n) and C, D
// [16][8], row-major. Each lane loads its fragments as the PTX ISA lays them out, from the raw
// fp32 bits (no cvt, so the tensor cores' own treatment of the low 13 bits shows), stores its d
// registers where the layout says they belong in D, and also as lanes[4·lane + i], so that a test
// sees which lane got what.
extern "C" __global__ void selftest_mma_tf32(const float* __restrict__ a, const float* __restrict__ b,
                                             const float* __restrict__ c, float* __restrict__ d,
                                             float* __restrict__ lanes) {
    unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    unsigned a_frag[4] = {__float_as_uint(a[g * 8 + t]), __float_as_uint(a[(g + 8) * 8 + t]),
                          __float_as_uint(a[g * 8 + t + 4]), __float_as_uint(a[(g + 8) * 8 + t + 4])};
    unsigned b_frag[2] = {__float_as_uint(b[t * 8 + g]), __float_as_uint(b[(t + 4) * 8 + g])};
    float c_frag[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                       c[(g + 8) * 8 + 2 * t + 1]};
    float d_frag[4];
    mma_m16n8k8_tf32(d_frag, a_frag, b_frag, c_frag);
    d[g * 8 + 2 * t] = d_frag[0];
    d[g * 8 + 2 * t + 1] = d_frag[1];
    d[(g + 8) * 8 + 2 * t] = d_frag[2];
    d[(g + 8) * 8 + 2 * t + 1] = d_frag[3];
    for (int i = 0; i < 4; ++i) lanes[4 * lane + i] = d_frag[i];
}

// out[i] = the bits of cvt.rna.tf32.f32(x[i]).
extern "C" __global__ void selftest_cvt_rna_tf32(const float* __restrict__ x, unsigned* __restrict__ out,
                                                 unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = cvt_rna_tf32(x[i]);
}

// cp.async with its groups, one block of 32 threads, x of 64 floats, out of 96:
//   out[i]       = x[i]              group 0, read after wait_group 2 (groups 1 and 2 pending)
//   out[32 + i]  = x[32 + (i+1)%32]  group 1, a neighbour's copy, read after wait_group 0 and a
//                                    barrier
//   out[64 + i]  = 0                 group 2, a zero-filling copy (src-size 0) over -1
extern "C" __global__ void selftest_cp_async(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ float staged[3][32];
    unsigned i = threadIdx.x;
    for (int s = 0; s < 3; ++s) staged[s][i] = -1.0f;
    __syncthreads();
    cp_async_4(&staged[0][i], &x[i], 4);
    cp_async_commit();
    cp_async_4(&staged[1][i], &x[32 + i], 4);
    cp_async_commit();
    cp_async_4(&staged[2][i], &x[i], 0);
    cp_async_commit();
    cp_async_wait<2>();
    out[i] = staged[0][i];
    cp_async_wait<0>();
    __syncthreads();
    out[32 + i] = staged[1][(i + 1) % 32];
    out[64 + i] = staged[2][i];
}

// Deliberately wrong, for the emulator only (a race on a GPU): out[i] = a copy's destination
// read before any wait. The emulator performs copies only at a wait that covers them and holds
// NaN in their destinations until then, so it reads NaN, and a kernel that forgets its wait
// fails its tests there.
extern "C" __global__ void selftest_cp_async_unwaited(const float* __restrict__ x,
                                                      float* __restrict__ out) {
    __shared__ float staged[32];
    unsigned i = threadIdx.x;
    staged[i] = -1.0f;
    __syncthreads();
    cp_async_4(&staged[i], &x[i], 4);
    cp_async_commit();
    out[i] = staged[i];
    cp_async_wait<0>();
}

// cp.async double-buffered as the GEMM tile loop does it, one block of 32 threads, x of 32·steps
// floats: at step s each thread copies x[32 (s + 1) + i] into the other buffer, waits for step
// s's copies, and reads its neighbour's: out[32 s + i] = x[32 s + (i + 1) % 32]. Bit 0 of
// `barriers` puts the __syncthreads after the wait, bit 1 the one after the read. With either
// missing the kernel is deliberately wrong (a race on a GPU), for the emulator to catch: a
// neighbour's copy read before its wait, or a buffer refilled while a neighbour still reads it,
// reads NaN there.
extern "C" __global__ void selftest_cp_async_pipeline(const float* __restrict__ x,
                                                      float* __restrict__ out, int steps,
                                                      int barriers) {
    __shared__ float staged[2][32];
    unsigned i = threadIdx.x;
    cp_async_4(&staged[0][i], &x[i], 4);
    cp_async_commit();
    for (int s = 0; s < steps; ++s) {
        if (s + 1 < steps) cp_async_4(&staged[(s + 1) % 2][i], &x[32 * (s + 1) + i], 4);
        cp_async_commit();
        cp_async_wait<1>();
        if (barriers & 1) __syncthreads();
        out[32 * s + i] = staged[s % 2][(i + 1) % 32];
        if (barriers & 2) __syncthreads();
    }
}
#endif
