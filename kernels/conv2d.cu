// conv2d.cu: 2-D convolution over NCHW input (square kernel, equal stride and padding on both
// axes, PyTorch weight layout [out, in, k, k]) and its gradients.
//
// Each pass is a matrix product computed as an "implicit GEMM": the operands are gathered from
// the NCHW tensors on the fly while staging them in shared memory, so no im2col buffer is built.
// With P = out_height·out_width output pixels per image and D = in_channels·k·k:
//   forward          y[n, o, p]          = Σ_d  W[o, d] · patch[(n, p), d]          (+ bias[o])
//   backward_input   dx[n, c, ih, iw]    = Σ_(o, di, dj)  W[o, c, di, dj] · dy[n, o, oh, ow]
//                                          over the (oh, ow) whose window covers (ih, iw)
//   backward_weight  dW[o, d]            = Σ_(n, p)  dy[n, o, p] · patch[(n, p), d]
//                    db[o]               = Σ_(n, p)  dy[n, o, p] · 1
// where patch[(n, p), (c, di, dj)] is the input under kernel tap (di, dj) at output pixel p,
// zero in the padding. The bias is the weight of an input that is always 1, so its gradient is
// one more column, d = D, of the weight gradient's product.
//
// The tiling is linear.cu's: C[M, N] = Σ_d A(i, d)·B(j, d), a block of 256 threads per 64x64
// tile of C, slices of depth 16 staged in shared memory, a 4x4 register micro-tile per thread
// owning rows ty + 16·i and columns tx + 16·j. Here A and B are small structs that compute
// where element (row, d) lives instead of plain matrices.
//
// The weight gradient sums over batch·P, long next to its few tiles (one for the network's first
// layer): launches.rs then splits the sum across gridDim.z blocks, which add their partial tiles
// atomically into outputs it zeroed first. The other passes have short sums and are not split.

#define TILE 64              // rows and columns of C per block
#define TILE_DEPTH 16        // depth of the operand slices staged in shared memory
#define MICRO 4              // each thread computes MICRO x MICRO elements of C
#define SPAN (TILE / MICRO)  // threads along each side of the tile: 16
#define THREADS (SPAN * SPAN)

struct ConvShape {
    int batch, in_channels, out_channels, height, width, kernel, stride, padding;
    int out_height, out_width;

    __device__ int out_pixels() const { return out_height * out_width; }
    __device__ int taps() const { return kernel * kernel; }
    __device__ int patch_len() const { return in_channels * kernel * kernel; }  // D
};

// The weight as [out_channels, D]: its stored layout, read along the depth.
struct WeightRows {
    const float* w;
    int patch_len;
    static constexpr bool depth_contiguous = true;
    __device__ float operator()(int o, int d) const { return w[o * patch_len + d]; }
};

// The weight as [in_channels, (o, di, dj)]: the matrix that maps output gradients back to
// input channel c. Contiguous along (di, dj) within one o.
struct WeightColumns {
    const float* w;
    ConvShape s;
    static constexpr bool depth_contiguous = true;
    __device__ float operator()(int c, int d) const {
        int o = d / s.taps(), tap = d % s.taps();
        return w[(o * s.in_channels + c) * s.taps() + tap];
    }
};

// The output gradient as [out_channels, (n, p)]: contiguous along the pixels of one image.
struct OutputGradRows {
    const float* dy;
    ConvShape s;
    static constexpr bool depth_contiguous = true;
    __device__ float operator()(int o, int pixel) const {
        int n = pixel / s.out_pixels(), p = pixel % s.out_pixels();
        return dy[(n * s.out_channels + o) * s.out_pixels() + p];
    }
};

// patch[(n, p), (c, di, dj)]: the im2col matrix of x, one row per output pixel.
__device__ __forceinline__ float patch(const float* x, const ConvShape& s, int pixel, int d) {
    int n = pixel / s.out_pixels(), p = pixel % s.out_pixels();
    int oh = p / s.out_width, ow = p % s.out_width;
    int c = d / s.taps(), tap = d % s.taps();
    int ih = oh * s.stride - s.padding + tap / s.kernel;
    int iw = ow * s.stride - s.padding + tap % s.kernel;
    if (ih < 0 || ih >= s.height || iw < 0 || iw >= s.width) return 0.0f;
    return x[((n * s.in_channels + c) * s.height + ih) * s.width + iw];
}

// The patches as [(n, p), D], rows on consecutive threads: neighbouring output pixels read
// neighbouring inputs.
struct PatchRows {
    const float* x;
    ConvShape s;
    static constexpr bool depth_contiguous = false;
    __device__ float operator()(int pixel, int d) const { return patch(x, s, pixel, d); }
};

// The patches as [D + 1, (n, p)], for the weight gradient, whose depth is the pixels; row D is
// the bias's input, all ones.
struct PatchColumns {
    const float* x;
    ConvShape s;
    static constexpr bool depth_contiguous = true;
    __device__ float operator()(int d, int pixel) const {
        return d == s.patch_len() ? 1.0f : patch(x, s, pixel, d);
    }
};

// The output gradient as [(n, ih, iw), (o, di, dj)]: dy at the output pixel whose tap (di, dj)
// lands on input pixel (ih, iw), zero where none does (past an edge, or between strides).
struct OutputGradPatches {
    const float* dy;
    ConvShape s;
    static constexpr bool depth_contiguous = false;
    __device__ float operator()(int pixel, int d) const {
        int in_pixels = s.height * s.width;
        int n = pixel / in_pixels, ih = pixel % in_pixels / s.width, iw = pixel % s.width;
        int o = d / s.taps(), tap = d % s.taps();
        int sh = ih + s.padding - tap / s.kernel;  // = oh·stride if tap (di, dj) of (oh, ow)
        int sw = iw + s.padding - tap % s.kernel;  //   covers (ih, iw)
        if (sh < 0 || sw < 0 || sh % s.stride != 0 || sw % s.stride != 0) return 0.0f;
        int oh = sh / s.stride, ow = sw / s.stride;
        if (oh >= s.out_height || ow >= s.out_width) return 0.0f;
        return dy[((n * s.out_channels + o) * s.out_height + oh) * s.out_width + ow];
    }
};

// Copies rows [row0, row0 + TILE) x depth [d0, d0 + TILE_DEPTH) of an operand into
// slice[d][r], zero outside [rows, depth]. Consecutive threads walk the depth when the operand
// is contiguous along it, else the rows. The +1 padding of each slice row keeps the stores of
// the depth-contiguous case, which stride by a row, off a single shared-memory bank.
template <typename Operand>
__device__ __forceinline__ void stage_slice(float slice[TILE_DEPTH][TILE + 1], const Operand& op,
                                            int rows, int depth, int row0, int d0) {
    for (int e = threadIdx.x; e < TILE * TILE_DEPTH; e += THREADS) {
        int d = Operand::depth_contiguous ? e % TILE_DEPTH : e / TILE;
        int r = Operand::depth_contiguous ? e / TILE_DEPTH : e % TILE;
        int row = row0 + r, k = d0 + d;
        slice[d][r] = row < rows && k < depth ? op(row, k) : 0.0f;
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

// Writes one element of C: the whole sum, or a split's part of it, added to the zeroed output.
__device__ __forceinline__ void store(float* dst, float value) {
    if (gridDim.z == 1) {
        *dst = value;
    } else {
        atomicAdd(dst, value);
    }
}

// acc[i][j] = C[row0 + ty + SPAN·i][col0 + tx + SPAN·j] for this block's tile of
// C[m, n] = Σ_d A(i, d)·B(j, d), summed over this block's share of the depth.
template <typename A, typename B>
__device__ __forceinline__ void implicit_gemm_tile(const A& a, const B& b, int m, int n, int depth,
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
        stage_slice(a_slice, a, m, depth, row0, d0);
        stage_slice(b_slice, b, n, depth, col0, d0);
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

// y = conv(x, W) + bias: C[out_channels, batch·P], each column an output pixel of one image.
// Grid: (⌈batch·P / 64⌉, ⌈out_channels / 64⌉) blocks of 256 threads; consecutive threads store
// consecutive pixels of one output plane.
extern "C" __global__ void conv2d_forward(const float* x, const float* w, const float* bias,
                                          float* y, int batch, int in_channels, int out_channels,
                                          int height, int width, int kernel, int stride,
                                          int padding, int out_height, int out_width) {
    ConvShape s = {batch,  in_channels, out_channels, height,     width,
                   kernel, stride,      padding,      out_height, out_width};
    __shared__ float a_slice[TILE_DEPTH][TILE + 1];
    __shared__ float b_slice[TILE_DEPTH][TILE + 1];
    float acc[MICRO][MICRO];
    WeightRows a = {w, s.patch_len()};
    PatchRows b = {x, s};
    int pixels = batch * s.out_pixels();
    implicit_gemm_tile(a, b, out_channels, pixels, s.patch_len(), a_slice, b_slice, acc);

    int tx = threadIdx.x % SPAN, ty = threadIdx.x / SPAN;
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
        int o = blockIdx.y * TILE + ty + SPAN * i;
#pragma unroll
        for (int j = 0; j < MICRO; ++j) {
            int pixel = blockIdx.x * TILE + tx + SPAN * j;
            if (o < out_channels && pixel < pixels) {
                int n = pixel / s.out_pixels(), p = pixel % s.out_pixels();
                y[(n * out_channels + o) * s.out_pixels() + p] = acc[i][j] + bias[o];
            }
        }
    }
}

// dx = the gradient of the input: C[in_channels, batch·height·width], each column an input
// pixel, summing over the output pixels and taps that read it. Every dx element is written.
// Grid: (⌈batch·height·width / 64⌉, ⌈in_channels / 64⌉) blocks of 256 threads.
extern "C" __global__ void conv2d_backward_input(const float* w, const float* dy, float* dx,
                                                 int batch, int in_channels, int out_channels,
                                                 int height, int width, int kernel, int stride,
                                                 int padding, int out_height, int out_width) {
    ConvShape s = {batch,  in_channels, out_channels, height,     width,
                   kernel, stride,      padding,      out_height, out_width};
    __shared__ float a_slice[TILE_DEPTH][TILE + 1];
    __shared__ float b_slice[TILE_DEPTH][TILE + 1];
    float acc[MICRO][MICRO];
    WeightColumns a = {w, s};
    OutputGradPatches b = {dy, s};
    int in_pixels = height * width, pixels = batch * in_pixels;
    int depth = out_channels * s.taps();
    implicit_gemm_tile(a, b, in_channels, pixels, depth, a_slice, b_slice, acc);

    int tx = threadIdx.x % SPAN, ty = threadIdx.x / SPAN;
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
        int c = blockIdx.y * TILE + ty + SPAN * i;
#pragma unroll
        for (int j = 0; j < MICRO; ++j) {
            int pixel = blockIdx.x * TILE + tx + SPAN * j;
            if (c < in_channels && pixel < pixels) {
                int n = pixel / in_pixels, p = pixel % in_pixels;
                dx[(n * in_channels + c) * in_pixels + p] = acc[i][j];
            }
        }
    }
}

// dW and db, the gradients of the weight and the bias: C[out_channels, D + 1], columns [0, D)
// into dW and column D into db. Each block sums its share of the batch·P pixels (all of them
// unless launches.rs splits the sum).
// Grid: (⌈(D + 1) / 64⌉, ⌈out_channels / 64⌉, splits of batch·P) blocks of 256 threads.
extern "C" __global__ void conv2d_backward_weight(const float* x, const float* dy, float* dw,
                                                  float* db, int batch, int in_channels,
                                                  int out_channels, int height, int width,
                                                  int kernel, int stride, int padding,
                                                  int out_height, int out_width) {
    ConvShape s = {batch,  in_channels, out_channels, height,     width,
                   kernel, stride,      padding,      out_height, out_width};
    __shared__ float a_slice[TILE_DEPTH][TILE + 1];
    __shared__ float b_slice[TILE_DEPTH][TILE + 1];
    float acc[MICRO][MICRO];
    OutputGradRows a = {dy, s};
    PatchColumns b = {x, s};
    int depth = batch * s.out_pixels();
    implicit_gemm_tile(a, b, out_channels, s.patch_len() + 1, depth, a_slice, b_slice, acc);

    int tx = threadIdx.x % SPAN, ty = threadIdx.x / SPAN;
#pragma unroll
    for (int i = 0; i < MICRO; ++i) {
        int o = blockIdx.y * TILE + ty + SPAN * i;
#pragma unroll
        for (int j = 0; j < MICRO; ++j) {
            int d = blockIdx.x * TILE + tx + SPAN * j;
            if (o >= out_channels) continue;
            if (d < s.patch_len()) store(&dw[o * s.patch_len() + d], acc[i][j]);
            if (d == s.patch_len()) store(&db[o], acc[i][j]);
        }
    }
}
