// maxpool.cu: 2x2, stride-2 max pooling over NCHW input, and its gradient.
//
// The windows do not overlap, and an odd trailing row or column belongs to no window (PyTorch
// drops it). Planes are [height, width] for x and [height / 2, width / 2] for y.

// y = the maximum of each 2x2 window; argmax = the flat index into x of that maximum, the first
// one in row-major window order on ties.
// One thread per output element; consecutive threads take consecutive output columns, so the
// stores coalesce and the loads of each warp cover two contiguous spans of two input rows.
extern "C" __global__ void maxpool2d_forward(const float* x, float* y, unsigned int* argmax,
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
    y[i] = best_value;
    argmax[i] = (unsigned int)best;
}

// dx[j] = dy[i] if j is argmax[i] of the window i containing j, else 0 (also for the dropped odd
// row and column).
// One thread per input element: windows do not overlap, so each input element has at most one
// window and computes its own gradient. Every dx element is written, without atomics and
// without zeroing dx first.
extern "C" __global__ void maxpool2d_backward(const unsigned int* argmax, const float* dy,
                                              float* dx, int planes, int height, int width) {
    int out_h = height / 2, out_w = width / 2;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= planes * height * width) return;
    int w = j % width;
    int h = (j / width) % height;
    int plane = j / (width * height);

    float grad = 0.0f;
    int oh = h / 2, ow = w / 2;
    if (oh < out_h && ow < out_w) {
        int i = (plane * out_h + oh) * out_w + ow;
        if (argmax[i] == (unsigned int)j) grad = dy[i];
    }
    dx[j] = grad;
}
