// linear.cu: the fully connected layer, y = x·Wᵀ + b, and its gradients, each a product run on
// gemm.cuh's tile loop.
//
// x [batch, in], W [out, in] (PyTorch's layout), y [batch, out]; row-major f32. Each pass is a
// product C[i][j] = Σ_d A(i, d)·B(j, d) of two [rows, depth] operands, each stored either that
// way round (Rows) or transposed (Columns):
//   forward          y  = x·Wᵀ   A = x  [batch, in]                 B = W [out, in]
//   backward_input   dx = dy·W   A = dy [batch, out]                B = W, transposed: [out, in]
//   backward_weight  dW = dyᵀ·x  A = dy, transposed: [batch, out]   B = x, transposed: [batch, in]
// Every pass comes in two versions: the exact fp32 engine (linear_<pass>) and the TF32
// tensor-core engine (linear_<pass>_tf32).
//
// A long sum over few tiles (the forward pass at a small batch, the weight gradient at a large
// one) would leave most of the GPU idle: split_gemm then splits the depth across gridDim.z
// blocks, which write partial tiles that linear_sum_parts adds up in a fixed order.

#include "gemm.cuh"

// An operand stored [depth, rows], row-major: the transpose of what the product reads (Rows, the
// plain layout, is gemm.cuh's).
struct Columns {
    const float* p;
    int rows;
    static constexpr bool depth_contiguous = false, addressable = true;
    __device__ const float* address(int row, int d) const { return &p[d * rows + row]; }
};

// Stores element (row, col) of C [rows, cols]: plus bias[col] when a bias is given, then
// rectified when relu is set (as relu_forward: −0 and NaN give 0).
__device__ __forceinline__ void store_output(float* c, const float* bias, int relu, int cols,
                                             int row, int col, float value) {
    if (bias) value += bias[col];
    if (relu) value = value > 0.0f ? value : 0.0f;
    c[row * cols + col] = value;
}

// y[batch, out] = x·Wᵀ + bias, rectified when relu is set, as the tile is stored.
// Grid: (⌈out / 64⌉, ⌈batch / 64⌉, splits of in) blocks of 256 threads.
template <typename Engine>
__device__ __forceinline__ void forward(const float* x, const float* w, const float* bias, float* y,
                                        float* parts, int batch, int in_features,
                                        int out_features, int relu) {
    gemm_tile<Engine>(Rows{x, in_features}, Rows{w, in_features}, batch, out_features,
                      in_features, parts, [&](int row, int col, float value) {
                          store_output(y, bias, relu, out_features, row, col, value);
                      });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    linear_forward(const float* x, const float* w, const float* bias, float* y, float* parts,
                   int batch, int in_features, int out_features, int relu) {
    forward<SimtEngine>(x, w, bias, y, parts, batch, in_features, out_features, relu);
}

#if __CUDA_ARCH__ >= 800
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    linear_forward_tf32(const float* x, const float* w, const float* bias, float* y, float* parts,
                        int batch, int in_features, int out_features, int relu) {
    forward<Tf32Engine>(x, w, bias, y, parts, batch, in_features, out_features, relu);
}
#endif

// dx[batch, in] = dy·W.
// Grid: (⌈in / 64⌉, ⌈batch / 64⌉, splits of out) blocks of 256 threads.
template <typename Engine>
__device__ __forceinline__ void backward_input(const float* w, const float* dy, float* dx,
                                               float* parts, int batch, int in_features,
                                               int out_features) {
    gemm_tile<Engine>(Rows{dy, out_features}, Columns{w, in_features}, batch, in_features,
                      out_features, parts, [&](int row, int col, float value) {
                          dx[row * in_features + col] = value;
                      });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    linear_backward_input(const float* w, const float* dy, float* dx, float* parts, int batch,
                          int in_features, int out_features) {
    backward_input<SimtEngine>(w, dy, dx, parts, batch, in_features, out_features);
}

#if __CUDA_ARCH__ >= 800
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    linear_backward_input_tf32(const float* w, const float* dy, float* dx, float* parts,
                               int batch, int in_features, int out_features) {
    backward_input<Tf32Engine>(w, dy, dx, parts, batch, in_features, out_features);
}
#endif

// dW[out, in] = dyᵀ·x: the sum over the batch runs along the depth.
// Grid: (⌈in / 64⌉, ⌈out / 64⌉, splits of batch) blocks of 256 threads.
template <typename Engine>
__device__ __forceinline__ void backward_weight(const float* x, const float* dy, float* dw,
                                                float* parts, int batch, int in_features,
                                                int out_features) {
    gemm_tile<Engine>(Columns{dy, out_features}, Columns{x, in_features}, out_features,
                      in_features, batch, parts, [&](int row, int col, float value) {
                          dw[row * in_features + col] = value;
                      });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    linear_backward_weight(const float* x, const float* dy, float* dw, float* parts, int batch,
                           int in_features, int out_features) {
    backward_weight<SimtEngine>(x, dy, dw, parts, batch, in_features, out_features);
}

#if __CUDA_ARCH__ >= 800
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    linear_backward_weight_tf32(const float* x, const float* dy, float* dw, float* parts,
                                int batch, int in_features, int out_features) {
    backward_weight<Tf32Engine>(x, dy, dw, parts, batch, in_features, out_features);
}
#endif

// The second pass of any split linear product C [rows, cols]: adds the `splits` partial products
// in parts, in order, then stores as the first pass would have (bias and relu: the forward's
// epilogue; null and 0 for the gradients). One thread per element.
extern "C" __global__ void linear_sum_parts(const float* parts, int splits, const float* bias,
                                            float* c, int rows, int cols, int relu) {
    sum_parts(parts, splits, rows, cols, [&](int row, int col, float value) {
        store_output(c, bias, relu, cols, row, col, value);
    });
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
