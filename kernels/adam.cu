// adam.cu: one fused step of torch.optim.Adam (no weight decay, no amsgrad) over every tensor of
// the network in one launch.
//
// One thread per parameter: each reads its parameter, gradient and two moments once and writes
// three of them back, so the whole step is one pass over memory.
//
// The bias corrections depend only on the step count, so the host folds them into two scalars
// (as PyTorch does): step_size = lr / (1 − β1ᵗ) and bias_correction2_sqrt = √(1 − β2ᵗ).
//   m = β1·m + (1 − β1)·g
//   v = β2·v + (1 − β2)·g²
//   p = p − step_size · m / (√v / bias_correction2_sqrt + eps)

// A multi-tensor apply, as PyTorch's fused Adam: tensor t holds offsets[t + 1] − offsets[t] parameters at the address params[t], its gradient
// at grads[t], and its moments at m + offsets[t] and v + offsets[t] of two flat buffers.
// One thread per parameter of all tensors together; each finds its tensor by scanning the
// offsets (a network has a handful of tensors, so a scan beats a search).
// step_size and bias_correction2_sqrt are read from device memory (step_scalars[0] and [1]), not
// passed by value, so that a captured CUDA graph replays every step with that step's values.
extern "C" __global__ void adam_update_tensors(const unsigned long long* params,
                                               const unsigned long long* grads,
                                               const unsigned int* offsets, int tensors,
                                               float* m, float* v, float beta1, float beta2,
                                               float eps, const float* step_scalars) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= offsets[tensors]) return;
    int t = 0;
    while (offsets[t + 1] <= i) ++t;
    unsigned int k = i - offsets[t];
    float* p = (float*)params[t];
    const float* g_t = (const float*)grads[t];
    float g = g_t[k];
    float m_i = beta1 * m[i] + (1.0f - beta1) * g;
    float v_i = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = m_i;
    v[i] = v_i;
    p[k] -= step_scalars[0] * m_i / (sqrtf(v_i) / step_scalars[1] + eps);
}
