// linear.cu: the fully connected layer, y = x·Wᵀ + b, and its gradients, all as one tiled SGEMM.
//
// x [batch, in], W [out, in] (PyTorch's layout), y [batch, out]; row-major f32. Each pass is a
// product C[i][j] = Σ_d A(i, d)·B(j, d) of two [rows, depth] operands, each stored either that
// way round ("depth-contiguous") or transposed:
//   forward          y  = x·Wᵀ   A = x  [batch, in]                 B = W [out, in]
//   backward_input   dx = dy·W   A = dy [batch, out]                B = W, transposed: [out, in]
//   backward_weight  dW = dyᵀ·x  A = dy, transposed: [batch, out]   B = x, transposed: [batch, in]
//
// Tiling (all three): a block of 256 threads computes a 64x64 tile of C. It walks the depth in
// steps of 16, staging a 64x16 slice of each operand in shared memory, and each thread accumulates
// a 4x4 micro-tile of C in registers, so every value it reads from shared memory feeds four
// multiply-adds. Thread (tx, ty) of the 16x16 grid owns rows ty + 16·i and columns tx + 16·j:
// a half-warp then reads 16 consecutive floats of a B slice (no bank conflicts) and stores 16
// consecutive floats of a row of C (coalesced).
//
// A long sum over few tiles (the forward pass at a small batch, the weight gradient at a large
// one) would leave most of the GPU idle: launches.rs then splits the depth across gridDim.z
// blocks, which add their partial tiles atomically into an output it zeroed first.

#define TILE 64              // rows and columns of C per block
#define TILE_DEPTH 16        // depth of the operand slices staged in shared memory
#define MICRO 4              // each thread computes MICRO x MICRO elements of C
#define SPAN (TILE / MICRO)  // threads along each side of the tile: 16
#define THREADS (SPAN * SPAN)

// Copies rows [row0, row0 + TILE) x depth [d0, d0 + TILE_DEPTH) of an operand into
// slice[d][r], zero outside the matrix. The operand is stored [rows, depth] when
// DEPTH_CONTIGUOUS, else [depth, rows]; consecutive threads walk whichever index is contiguous
// in memory, so the global loads coalesce either way. The +1 padding of each slice row keeps the
// depth-contiguous stores, which stride by a row, off a single shared-memory bank.
template <bool DEPTH_CONTIGUOUS>
__device__ __forceinline__ void stage_slice(float slice[TILE_DEPTH][TILE + 1], const float* src,
                                            int rows, int depth, int row0, int d0) {
    for (int e = threadIdx.x; e < TILE * TILE_DEPTH; e += THREADS) {
        int d = DEPTH_CONTIGUOUS ? e % TILE_DEPTH : e / TILE;
        int r = DEPTH_CONTIGUOUS ? e / TILE_DEPTH : e % TILE;
        int row = row0 + r, k = d0 + d;
        float value = 0.0f;
        if (row < rows && k < depth) {
            value = DEPTH_CONTIGUOUS ? src[row * depth + k] : src[k * rows + row];
        }
        slice[d][r] = value;
    }
}

// This block's share [begin, end) of a sum over `depth`: split blockIdx.z of gridDim.z, in whole
// slices (gridDim.z is 1 but for a split sum: the whole depth).
__device__ __forceinline__ void depth_range(int depth, int& begin, int& end) {
    int slices = (depth + TILE_DEPTH - 1) / TILE_DEPTH;
    int slices_per_split = (slices + (int)gridDim.z - 1) / (int)gridDim.z;
    begin = min(depth, (int)blockIdx.z * slices_per_split * TILE_DEPTH);
    end = min(depth, begin + slices_per_split * TILE_DEPTH);
}

// acc[i][j] = C[row0 + ty + SPAN·i][col0 + tx + SPAN·j] for this block's tile of C = A·Bᵀ
// (A [m, depth], B [n, depth], each stored as its template flag says), summed over this block's
// share of the depth.
template <bool A_DEPTH_CONTIGUOUS, bool B_DEPTH_CONTIGUOUS>
__device__ __forceinline__ void sgemm_tile(const float* a, const float* b, int m, int n, int depth,
                                           float a_slice[TILE_DEPTH][TILE + 1],
                                           float b_slice[TILE_DEPTH][TILE + 1],
                                           float acc[MICRO][MICRO]) {
    int tx = threadIdx.x % SPAN, ty = threadIdx.x / SPAN;
    int row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
#pragma unroll
        for (int j = 0; j < MICRO; ++j) acc[i][j] = 0.0f;
    }
    int begin, end;
    depth_range(depth, begin, end);
    for (int d0 = begin; d0 < end; d0 += TILE_DEPTH) {
        stage_slice<A_DEPTH_CONTIGUOUS>(a_slice, a, m, depth, row0, d0);
        stage_slice<B_DEPTH_CONTIGUOUS>(b_slice, b, n, depth, col0, d0);
        __syncthreads();
#pragma unroll
        for (int d = 0; d < TILE_DEPTH; ++d) {
            float a_frag[MICRO], b_frag[MICRO];
#pragma unroll
            for (int i = 0; i < MICRO; ++i) a_frag[i] = a_slice[d][ty + SPAN * i];
#pragma unroll
            for (int j = 0; j < MICRO; ++j) b_frag[j] = b_slice[d][tx + SPAN * j];
#pragma unroll
            for (int i = 0; i < MICRO; ++i) {
#pragma unroll
                for (int j = 0; j < MICRO; ++j) acc[i][j] += a_frag[i] * b_frag[j];
            }
        }
        __syncthreads();  // the slices are overwritten next step
    }
}

// Writes one element of C: the whole sum, or a split's part of it, added to the zeroed output.
__device__ __forceinline__ void store(float* dst, float value) {
    if (gridDim.z == 1) {
        *dst = value;
    } else {
        atomicAdd(dst, value);
    }
}

// Stores this block's tile of C [rows, cols] from the accumulators, adding bias[col] when a bias
// is given; elements past the edge of C are dropped. A split's partial tile is added to the
// zeroed C instead, and only split 0 adds the bias.
__device__ __forceinline__ void store_tile(float* c, const float acc[MICRO][MICRO],
                                           const float* bias, int rows, int cols) {
    if (blockIdx.z > 0) bias = nullptr;
    int tx = threadIdx.x % SPAN, ty = threadIdx.x / SPAN;
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
        int row = blockIdx.y * TILE + ty + SPAN * i;
#pragma unroll
        for (int j = 0; j < MICRO; ++j) {
            int col = blockIdx.x * TILE + tx + SPAN * j;
            if (row < rows && col < cols) {
                store(&c[row * cols + col], bias ? acc[i][j] + bias[col] : acc[i][j]);
            }
        }
    }
}

// y[batch, out] = x·Wᵀ + bias, the bias added as the tile is stored.
// Grid: (⌈out / 64⌉, ⌈batch / 64⌉, splits of in) blocks of 256 threads.
extern "C" __global__ void linear_forward(const float* x, const float* w, const float* bias,
                                          float* y, int batch, int in_features,
                                          int out_features) {
    __shared__ float a_slice[TILE_DEPTH][TILE + 1];
    __shared__ float b_slice[TILE_DEPTH][TILE + 1];
    float acc[MICRO][MICRO];
    sgemm_tile<true, true>(x, w, batch, out_features, in_features, a_slice, b_slice, acc);
    store_tile(y, acc, bias, batch, out_features);
}

// dx[batch, in] = dy·W.
// Grid: (⌈in / 64⌉, ⌈batch / 64⌉, splits of out) blocks of 256 threads.
extern "C" __global__ void linear_backward_input(const float* w, const float* dy, float* dx,
                                                 int batch, int in_features, int out_features) {
    __shared__ float a_slice[TILE_DEPTH][TILE + 1];
    __shared__ float b_slice[TILE_DEPTH][TILE + 1];
    float acc[MICRO][MICRO];
    sgemm_tile<true, false>(dy, w, batch, in_features, out_features, a_slice, b_slice, acc);
    store_tile(dx, acc, nullptr, batch, in_features);
}

// dW[out, in] = dyᵀ·x: the sum over the batch runs along the depth.
// Grid: (⌈in / 64⌉, ⌈out / 64⌉, splits of batch) blocks of 256 threads.
extern "C" __global__ void linear_backward_weight(const float* x, const float* dy, float* dw,
                                                  int batch, int in_features, int out_features) {
    __shared__ float a_slice[TILE_DEPTH][TILE + 1];
    __shared__ float b_slice[TILE_DEPTH][TILE + 1];
    float acc[MICRO][MICRO];
    sgemm_tile<false, false>(dy, x, out_features, in_features, batch, a_slice, b_slice, acc);
    store_tile(dw, acc, nullptr, out_features, in_features);
}

// db[out] = Σ_batch dy. One thread per output feature, summing its column of dy in batch order:
// consecutive threads read consecutive floats of each row, and the sum is deterministic.
extern "C" __global__ void linear_backward_bias(const float* dy, float* db, int batch,
                                                int out_features) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out_features) return;
    float sum = 0.0f;
    for (int n = 0; n < batch; ++n) sum += dy[n * out_features + o];
    db[o] = sum;
}
