// Data movement for a training step. The whole dataset is uploaded once as bytes; each step
// gathers its shuffled batch on the device, so only the batch's indices cross the bus.
// One thread per output element: neighbouring threads read neighbouring bytes of one image.

// The index of a padding row, whose image is zeros and whose label is 0xffffffff (which the loss
// ignores).
#define PAD_INDEX 0xffffffffu

// out[i, p] = (images[indices[i], p] / 255 - 0.5) / 0.5 (the tutorial's normalisation) for
// `count` indices into `image_count` images of `image_len` pixels. PAD_INDEX (a padding row of
// an epoch's last, short batch) gives zero pixels; any other index past the dataset gives NaN
// pixels instead of a read outside the buffer.
extern "C" __global__ void gather_images(const unsigned char* __restrict__ images,
                                         const unsigned* __restrict__ indices,
                                         float* __restrict__ out, unsigned image_len,
                                         unsigned image_count, unsigned count) {
    unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= count * image_len) return;
    unsigned i = e / image_len;
    unsigned image = indices[i];
    if (image >= image_count) {
        out[e] = image == PAD_INDEX ? 0.0f : __int_as_float(0x7fc00000);
        return;
    }
    float pixel = images[(unsigned long long)image * image_len + (e - i * image_len)];
    out[e] = (pixel / 255.0f - 0.5f) / 0.5f;
}

// out[i] = labels[indices[i]], widened to u32; an index past the `label_count` labels (PAD_INDEX
// among them) gives 0xffffffff, which no class matches and the fused loss ignores.
extern "C" __global__ void gather_labels(const unsigned char* __restrict__ labels,
                                         const unsigned* __restrict__ indices,
                                         unsigned* __restrict__ out, unsigned label_count,
                                         unsigned count) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    unsigned label = indices[i];
    out[i] = label < label_count ? labels[label] : 0xffffffffu;
}

// words[i] = 0 for i < count: clears gradient accumulators (f32 and u32 share the bit pattern).
extern "C" __global__ void fill_zero(unsigned* __restrict__ words, unsigned count) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) words[i] = 0;
}
