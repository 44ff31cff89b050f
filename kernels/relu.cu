// relu.cu: the gradient of the rectifier y = max(x, 0). The forward runs fused into the op before
// it (linear_forward's epilogue, maxpool2d_relu_forward); the backward of fc1 and fc2 runs here.
//
// Elementwise: one thread per element, consecutive threads on consecutive elements, so every load
// and store is coalesced.

// dx = dy where the forward output y > 0, else 0. The mask comes from y, not x: relu(x) > 0
// exactly where x > 0, and y is what the layer keeps.
extern "C" __global__ void relu_backward(const float* y, const float* dy, float* dx, int len) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}
