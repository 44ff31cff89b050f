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
// Each pass runs gemm.cuh's tile loop with views of its operands, in two versions: the exact fp32
// engine (conv2d_<pass>) and the TF32 tensor-core engine (conv2d_<pass>_tf32).
//
// The weight gradient sums over batch·P, long next to its few tiles (one for the network's first
// layer): split_gemm then splits the sum across gridDim.z blocks, which write partial tiles that
// conv2d_backward_weight_sum_parts adds up in a fixed order.

#include "gemm.cuh"

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
    static constexpr bool depth_contiguous = true, addressable = true;
    __device__ const float* address(int o, int d) const { return &w[o * patch_len + d]; }
};

// The weight as [in_channels, (o, di, dj)]: the matrix that maps output gradients back to
// input channel c. Contiguous along (di, dj) within one o.
struct WeightColumns {
    const float* w;
    ConvShape s;
    static constexpr bool depth_contiguous = true, addressable = true;
    __device__ const float* address(int c, int d) const {
        int o = d / s.taps(), tap = d % s.taps();
        return &w[(o * s.in_channels + c) * s.taps() + tap];
    }
};

// The output gradient as [out_channels, (n, p)]: contiguous along the pixels of one image.
struct OutputGradRows {
    const float* dy;
    ConvShape s;
    static constexpr bool depth_contiguous = true, addressable = true;
    __device__ const float* address(int o, int pixel) const {
        int n = pixel / s.out_pixels(), p = pixel % s.out_pixels();
        return &dy[(n * s.out_channels + o) * s.out_pixels() + p];
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
    static constexpr bool depth_contiguous = false, addressable = false;
    __device__ float operator()(int pixel, int d) const { return patch(x, s, pixel, d); }
};

// The patches as [D + 1, (n, p)], for the weight gradient, whose depth is the pixels; row D is
// the bias's input, all ones.
struct PatchColumns {
    const float* x;
    ConvShape s;
    static constexpr bool depth_contiguous = true, addressable = false;
    __device__ float operator()(int d, int pixel) const {
        return d == s.patch_len() ? 1.0f : patch(x, s, pixel, d);
    }
};

// The output gradient as [(n, ih, iw), (o, di, dj)]: dy at the output pixel whose tap (di, dj)
// lands on input pixel (ih, iw), zero where none does (past an edge, or between strides).
struct OutputGradPatches {
    const float* dy;
    ConvShape s;
    static constexpr bool depth_contiguous = false, addressable = false;
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

// The sizes every conv kernel takes after its pointers, and the shape they make.
#define CONV_SIZE_PARAMS                                                                          \
    int batch, int in_channels, int out_channels, int height, int width, int kernel, int stride, \
        int padding, int out_height, int out_width
#define CONV_SHAPE                                                                                 \
    ConvShape {                                                                                    \
        batch, in_channels, out_channels, height, width, kernel, stride, padding, out_height,     \
            out_width                                                                              \
    }

// y = conv(x, W) + bias: C[out_channels, batch·P], each column an output pixel of one image.
// Grid: (⌈batch·P / 64⌉, ⌈out_channels / 64⌉) blocks of 256 threads.
template <typename Engine>
__device__ __forceinline__ void forward(const float* x, const float* w, const float* bias, float* y,
                                        ConvShape s) {
    int P = s.out_pixels();
    gemm_tile<Engine>(WeightRows{w, s.patch_len()}, PatchRows{x, s}, s.out_channels, s.batch * P,
                      s.patch_len(), nullptr, [&](int o, int pixel, float value) {
                          int n = pixel / P, p = pixel % P;
                          y[(n * s.out_channels + o) * P + p] = value + bias[o];
                      });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    conv2d_forward(const float* x, const float* w, const float* bias, float* y, CONV_SIZE_PARAMS) {
    forward<SimtEngine>(x, w, bias, y, CONV_SHAPE);
}

#if __CUDA_ARCH__ >= 800
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    conv2d_forward_tf32(const float* x, const float* w, const float* bias, float* y,
                        CONV_SIZE_PARAMS) {
    forward<Tf32Engine>(x, w, bias, y, CONV_SHAPE);
}
#endif

// dx = the gradient of the input: C[in_channels, batch·height·width], each column an input
// pixel, summing over the output pixels and taps that read it. Every dx element is written.
// Grid: (⌈batch·height·width / 64⌉, ⌈in_channels / 64⌉) blocks of 256 threads.
template <typename Engine>
__device__ __forceinline__ void backward_input(const float* w, const float* dy, float* dx,
                                               ConvShape s) {
    int in_pixels = s.height * s.width;
    gemm_tile<Engine>(WeightColumns{w, s}, OutputGradPatches{dy, s}, s.in_channels,
                      s.batch * in_pixels, s.out_channels * s.taps(), nullptr,
                      [&](int c, int pixel, float value) {
                          int n = pixel / in_pixels, p = pixel % in_pixels;
                          dx[(n * s.in_channels + c) * in_pixels + p] = value;
                      });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    conv2d_backward_input(const float* w, const float* dy, float* dx, CONV_SIZE_PARAMS) {
    backward_input<SimtEngine>(w, dy, dx, CONV_SHAPE);
}

#if __CUDA_ARCH__ >= 800
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    conv2d_backward_input_tf32(const float* w, const float* dy, float* dx, CONV_SIZE_PARAMS) {
    backward_input<Tf32Engine>(w, dy, dx, CONV_SHAPE);
}
#endif

// Stores element (o, d) of the weight gradient's C[out_channels, D + 1]: columns [0, D) are dW,
// column D is db.
__device__ __forceinline__ void store_weight_grad(float* dw, float* db, const ConvShape& s, int o,
                                                  int d, float value) {
    if (d < s.patch_len()) {
        dw[o * s.patch_len() + d] = value;
    } else {
        db[o] = value;
    }
}

// dW and db, the gradients of the weight and the bias: C[out_channels, D + 1]. Each block sums
// its share of the batch·P pixels: all of them, or, split, its part into parts.
// Grid: (⌈(D + 1) / 64⌉, ⌈out_channels / 64⌉, splits of batch·P) blocks of 256 threads.
template <typename Engine>
__device__ __forceinline__ void backward_weight(const float* x, const float* dy, float* dw,
                                                float* db, float* parts, ConvShape s) {
    gemm_tile<Engine>(OutputGradRows{dy, s}, PatchColumns{x, s}, s.out_channels,
                      s.patch_len() + 1, s.batch * s.out_pixels(), parts,
                      [&](int o, int d, float value) { store_weight_grad(dw, db, s, o, d, value); });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    conv2d_backward_weight(const float* x, const float* dy, float* dw, float* db, float* parts,
                           CONV_SIZE_PARAMS) {
    backward_weight<SimtEngine>(x, dy, dw, db, parts, CONV_SHAPE);
}

#if __CUDA_ARCH__ >= 800
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    conv2d_backward_weight_tf32(const float* x, const float* dy, float* dw, float* db,
                                float* parts, CONV_SIZE_PARAMS) {
    backward_weight<Tf32Engine>(x, dy, dw, db, parts, CONV_SHAPE);
}
#endif

// The split weight gradient's second pass: adds the `splits` partial [out_channels, D + 1]
// products in parts, in order. One thread per element.
extern "C" __global__ void conv2d_backward_weight_sum_parts(const float* parts, int splits,
                                                            float* dw, float* db,
                                                            CONV_SIZE_PARAMS) {
    ConvShape s = CONV_SHAPE;
    sum_parts(parts, splits, out_channels, s.patch_len() + 1,
              [&](int o, int d, float value) { store_weight_grad(dw, db, s, o, d, value); });
}
