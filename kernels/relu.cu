// relu.cu: the rectifier, y = max(x, 0), and its gradient.
//
// Both kernels are elementwise: one thread per element, consecutive threads on consecutive
// elements, so every load and store is coalesced.

// y = x where x > 0, else 0. Written as a comparison rather than fmaxf so that -0 and NaN give
// exactly the reference's 0.
extern "C" __global__ void relu_forward(const float* x, float* y, int len) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        float v = x[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

// dx = dy where the forward output y > 0, else 0. The mask comes from y, not x: relu(x) > 0
// exactly where x > 0, and y is what the layer keeps.
extern "C" __global__ void relu_backward(const float* y, const float* dy, float* dx, int len) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}
