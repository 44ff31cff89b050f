// maxpool.cu: 2x2, stride-2 max pooling over NCHW input fused with the ReLU that follows it, and
// its gradient.
//
// The windows do not overlap, and an odd trailing row or column belongs to no window (PyTorch
// drops it). Planes are [height, width] for x and [height / 2, width / 2] for y.
//
// ReLU is monotone, so pooling first and rectifying after equals the other order: the layer pair
// reads x once and writes y once instead of writing and reading the pooled map between.

// y = max(the maximum of each 2x2 window, 0); argmax = the flat index into x of the window's
// maximum, its first occurrence in row-major window order (ties keep the first).
// One thread per output element; consecutive threads take consecutive output columns, so the
// stores coalesce and the loads of each warp cover two contiguous spans of two input rows.
// The ReLU is a comparison rather than fmaxf so that -0 and NaN give exactly the reference's 0.
extern "C" __global__ void maxpool2d_relu_forward(const float* x, float* y, unsigned int* argmax,
                                                  int planes, int height, int width) {
    int out_h = height / 2, out_w = width / 2;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= planes * out_h * out_w) return;
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
    argmax[i] = (unsigned int)best;
    y[i] = best_value > 0.0f ? best_value : 0.0f;
}

// dx[j] = dy[i] if j is argmax[i] of the window i containing j and that window's output y[i] is
// positive (ReLU's mask, read from the output as relu_backward does); else 0, as for the dropped
// odd row and column.
// One thread per input element: windows do not overlap, so each input element has at most one
// window and computes its own gradient. Every dx element is written, without atomics and
// without zeroing dx first.
extern "C" __global__ void maxpool2d_relu_backward(const unsigned int* argmax, const float* y,
                                                   const float* dy, float* dx, int planes,
                                                   int height, int width) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= planes * height * width) return;
    int out_h = height / 2, out_w = width / 2;
    int w = j % width;
    int h = (j / width) % height;
    int plane = j / (width * height);
    int oh = h / 2, ow = w / 2;
    float gradient = 0.0f;
    if (oh < out_h && ow < out_w) {
        int i = (plane * out_h + oh) * out_w + ow;
        if (argmax[i] == (unsigned int)j && y[i] > 0.0f) gradient = dy[i];
    }
    dx[j] = gradient;
}
