// maxpool.cu: 2x2, stride-2 max pooling over NCHW input, and its gradient.
//
// The windows do not overlap, and an odd trailing row or column belongs to no window (PyTorch
// drops it). Planes are [height, width] for x and [height / 2, width / 2] for y.

// The maximum of output i's 2x2 window and the flat index into x of its first occurrence in
// row-major window order (ties keep the first).
__device__ __forceinline__ float pool_window(const float* x, int i, int height, int width,
                                             unsigned int* at) {
    int out_h = height / 2, out_w = width / 2;
    int ow = i % out_w;
    int oh = (i / out_w) % out_h;
    int plane = i / (out_w * out_h);

    int top_left = (plane * height + 2 * oh) * width + 2 * ow;
    int window[4] = {top_left, top_left + 1, top_left + width, top_left + width + 1};
    int best = window[0];
    float best_value = x[best];
#pragma unroll
    for (int k = 1; k < 4; ++k) {
        float v = x[window[k]];
        if (v > best_value) {  // strictly greater: ties keep the first
            best_value = v;
            best = window[k];
        }
    }
    *at = (unsigned int)best;
    return best_value;
}

// y = the maximum of each 2x2 window; argmax = the flat index into x of that maximum.
// One thread per output element; consecutive threads take consecutive output columns, so the
// stores coalesce and the loads of each warp cover two contiguous spans of two input rows.
extern "C" __global__ void maxpool2d_forward(const float* x, float* y, unsigned int* argmax,
                                             int planes, int height, int width) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= planes * (height / 2) * (width / 2)) return;
    y[i] = pool_window(x, i, height, width, &argmax[i]);
}

// Max-pool then ReLU in one pass: y = max(window max, 0), argmax as maxpool2d_forward's.
// ReLU is monotone, so pooling first and rectifying after equals the other order, and the layer
// pair reads x once and writes y once instead of writing and reading the pooled map between.
// Written as a comparison rather than fmaxf so that -0 and NaN give exactly relu_forward's 0.
extern "C" __global__ void maxpool2d_relu_forward(const float* x, float* y, unsigned int* argmax,
                                                  int planes, int height, int width) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= planes * (height / 2) * (width / 2)) return;
    float v = pool_window(x, i, height, width, &argmax[i]);
    y[i] = v > 0.0f ? v : 0.0f;
}

// The gradient output i sends to input j: dy[i] if j is the window's argmax and, after a fused
// ReLU (y non-null), the output was positive; else 0. Also 0 for the dropped odd row and column.
__device__ __forceinline__ float unpool(const unsigned int* argmax, const float* y,
                                        const float* dy, int j, int height, int width) {
    int out_h = height / 2, out_w = width / 2;
    int w = j % width;
    int h = (j / width) % height;
    int plane = j / (width * height);
    int oh = h / 2, ow = w / 2;
    if (oh >= out_h || ow >= out_w) return 0.0f;
    int i = (plane * out_h + oh) * out_w + ow;
    if (argmax[i] != (unsigned int)j) return 0.0f;
    if (y != nullptr && !(y[i] > 0.0f)) return 0.0f;
    return dy[i];
}

// dx[j] = dy[i] if j is argmax[i] of the window i containing j, else 0.
// One thread per input element: windows do not overlap, so each input element has at most one
// window and computes its own gradient. Every dx element is written, without atomics and
// without zeroing dx first.
extern "C" __global__ void maxpool2d_backward(const unsigned int* argmax, const float* dy,
                                              float* dx, int planes, int height, int width) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= planes * height * width) return;
    dx[j] = unpool(argmax, nullptr, dy, j, height, width);
}

// The gradient of maxpool2d_relu_forward: as maxpool2d_backward, but only where y > 0 (ReLU's
// mask, read from the output as relu_backward does).
extern "C" __global__ void maxpool2d_relu_backward(const unsigned int* argmax, const float* y,
                                                   const float* dy, float* dx, int planes,
                                                   int height, int width) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= planes * height * width) return;
    dx[j] = unpool(argmax, y, dy, j, height, width);
}
