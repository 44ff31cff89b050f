//! Fused ops whose unfused parts already have plain loops: the fused op is those loops, row by
//! row, so it is correct by construction and the kernels have a simple oracle.

use crate::{reference, XentShape, IGNORE_LABEL};

/// The loss forward and backward over the rows that are not padding: each real row through the
/// reference loss as a batch of one, its gradient then scaled from that row's 1 to the real
/// rows' count; padding rows get zero gradient and add nothing to `totals`.
pub fn softmax_xent(
    s: &XentShape,
    logits: &[f32],
    labels: &[u32],
    totals: &mut [f32],
    dlogits: &mut [f32],
) {
    let labels = &labels[..s.batch];
    let rows = labels.iter().filter(|&&l| l != IGNORE_LABEL).count();
    let scale = if rows > 0 { 1.0 / rows as f32 } else { 0.0 };
    let one_row = XentShape {
        batch: 1,
        classes: s.classes,
    };
    let logit_rows = logits.chunks_exact(s.classes);
    let grad_rows = dlogits.chunks_exact_mut(s.classes);
    for ((row, drow), &label) in logit_rows.zip(grad_rows).zip(labels) {
        if label == IGNORE_LABEL {
            drow.fill(0.0);
            continue;
        }
        reference::softmax_xent_forward(&one_row, row, &[label], totals);
        reference::softmax_xent_backward(&one_row, row, &[label], drow);
        drow.iter_mut().for_each(|d| *d *= scale);
    }
}
