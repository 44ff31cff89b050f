// softmax_xent.cu: softmax cross-entropy over logits [batch, classes] with integer labels.
//
// Each row is handled by one warp: its lanes stride over the classes and combine their partial
// results with butterfly shuffles (__shfl_xor_sync), after which every lane holds the row's
// maximum, first argmax and Σ exp(logit − max). Rows are short (10 classes here), so one warp
// per row keeps all 32 lanes busy enough without any shared memory.

#define WARP 32
#define FULL_MASK 0xffffffffu

// What a warp knows about one row once its lanes have combined their partial results.
struct RowStats {
    float max;      // the largest logit
    int argmax;     // the first class holding it
    float sum_exp;  // Σ exp(logit − max): the softmax denominator, scaled by exp(−max)
};

// Max and first argmax of a row, then the softmax denominator; the same result on every lane.
__device__ __forceinline__ RowStats row_stats(const float* row, int classes, int lane) {
    // Each lane scans its classes in increasing order, so a strict > keeps its first maximum.
    float best = __int_as_float(0xff800000);  // −inf
    int best_class = classes;                  // past the end: loses every tie
    for (int c = lane; c < classes; c += WARP) {
        if (c == lane || row[c] > best) {
            best = row[c];
            best_class = c;
        }
    }
    // Combine lanes; on equal values the smaller class wins, so the argmax is the row's first.
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        float other = __shfl_xor_sync(FULL_MASK, best, offset);
        int other_class = __shfl_xor_sync(FULL_MASK, best_class, offset);
        if (other > best || (other == best && other_class < best_class)) {
            best = other;
            best_class = other_class;
        }
    }
    float sum = 0.0f;
    for (int c = lane; c < classes; c += WARP) sum += expf(row[c] - best);
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        sum += __shfl_xor_sync(FULL_MASK, sum, offset);
    }
    RowStats stats = {best, best_class, sum};
    return stats;
}

// The label of a padding row (an epoch's last, short batch is padded to the full batch): it adds
// no loss, no count and no gradient, like PyTorch's ignore_index.
#define IGNORE_LABEL 0xffffffffu

// Forward and backward of the loss in one launch: totals[0] += Σ_n −log softmax(logits[n])[labels[n]]
// and totals[1] += the rows whose first maximum is at the label, over the rows whose label is not
// IGNORE_LABEL, and dlogits = (softmax − onehot) / rows for
// those rows (0 for padding rows), where rows is how many are not padding: the gradient of the
// mean over the real rows, so a padded batch trains exactly as the short batch would.
// One block, so that both the row count and the totals are summed in a fixed order: each warp
// takes rows warp, warp + warps, ... with its sums in lane 0, and thread 0 adds the warps' sums.
extern "C" __global__ void softmax_xent_fused(const float* logits, const unsigned int* labels,
                                              float* totals, float* dlogits, int batch,
                                              int classes) {
    __shared__ float warp_loss[WARP];
    __shared__ float warp_correct[WARP];
    __shared__ int warp_rows[WARP];
    __shared__ float row_scale;
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;

    // Count the real rows first: the gradient of every row divides by it.
    int rows = 0;
    for (int n = threadIdx.x; n < batch; n += blockDim.x) rows += labels[n] != IGNORE_LABEL;
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        rows += __shfl_xor_sync(FULL_MASK, rows, offset);
    }
    if (lane == 0) warp_rows[warp] = rows;
    __syncthreads();
    if (threadIdx.x == 0) {
        int total_rows = 0;
        for (int w = 0; w < warps; ++w) total_rows += warp_rows[w];
        row_scale = total_rows > 0 ? 1.0f / (float)total_rows : 0.0f;
    }
    __syncthreads();

    float loss = 0.0f, correct = 0.0f;
    for (int n = warp; n < batch; n += warps) {
        const float* row = logits + n * classes;
        float* drow = dlogits + n * classes;
        unsigned int label = labels[n];
        if (label == IGNORE_LABEL) {
            for (int c = lane; c < classes; c += WARP) drow[c] = 0.0f;
            continue;
        }
        RowStats stats = row_stats(row, classes, lane);
        // A label outside [0, classes) gives a NaN loss rather than a stray read.
        float label_logit = label < (unsigned int)classes ? row[label] : __int_as_float(0x7fc00000);
        // −log(exp(z_label − max) / Σ exp(z − max)) = log Σ exp(z − max) − (z_label − max)
        loss += logf(stats.sum_exp) - (label_logit - stats.max);
        correct += stats.argmax == (int)label ? 1.0f : 0.0f;
        // d loss / d z_c = softmax(z)_c − onehot_c, scaled by 1 / rows for the mean.
        for (int c = lane; c < classes; c += WARP) {
            float p = expf(row[c] - stats.max) / stats.sum_exp;
            float onehot = (unsigned int)c == label ? 1.0f : 0.0f;
            drow[c] = (p - onehot) * row_scale;
        }
    }
    if (lane == 0) {
        warp_loss[warp] = loss;
        warp_correct[warp] = correct;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float block_loss = 0.0f, block_correct = 0.0f;
        for (int w = 0; w < warps; ++w) {
            block_loss += warp_loss[w];
            block_correct += warp_correct[w];
        }
        totals[0] += block_loss;
        totals[1] += block_correct;
    }
}
