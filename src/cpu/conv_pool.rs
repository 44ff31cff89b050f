//! A convolution and the max-pool + ReLU after it, image by image.
//!
//! Run as two ops, conv1 writes its whole output (64 images x 32 planes of 28x28: 6.4 MB) to
//! memory for the pool to read back, and the backward pass writes the gradient of that output
//! (as large, three quarters zeros) for the weight gradient to read back. Here each image's
//! convolution output (100 KB) is pooled while it is still in L2, and its gradient is rebuilt
//! there from the pooled one, so neither ever leaves the cache. Same arithmetic, same order:
//! the results are those of the two ops, bit for bit.

use super::conv::{self, ImageConv, InputGrad, WeightGrad};
use super::pool;
use super::scratch::{with_scratch, CONV_OUT};
use crate::Conv2dShape;
use rayon::prelude::*;

/// Whether a shape has anything to fuse: images, channels, and pooling windows.
fn fusable(s: &Conv2dShape) -> bool {
    let p = s.pool2x2();
    s.input_len() > 0 && p.output_len() > 0
}

/// y = relu(maxpool(w ∗ x + b)), argmax indexing the convolution's output; `conv_out` (as long
/// as that output) is written only where the shape has nothing to fuse.
pub fn forward(
    s: &Conv2dShape,
    (x, w, b): (&[f32], &[f32], &[f32]),
    conv_out: &mut [f32],
    y: &mut [f32],
    argmax: &mut [u32],
) {
    let p = s.pool2x2();
    if !fusable(s) {
        conv::forward(s, x, w, b, conv_out);
        return pool::forward(&p, conv_out, y, argmax);
    }
    let conv = ImageConv::new(s, w, Some(b));
    let (image_len, out_len) = (s.input_len() / s.batch, s.output_len() / s.batch);
    let pooled_len = p.output_len() / s.batch;
    y.par_chunks_mut(pooled_len)
        .zip(argmax.par_chunks_mut(pooled_len))
        .zip(x.par_chunks(image_len))
        .enumerate()
        .for_each(|(n, ((y, argmax), x))| {
            with_scratch(&CONV_OUT, out_len, |out| {
                conv.image(x, out);
                pool::forward_planes(&p, n * s.out_channels, out, y, argmax);
            })
        });
}

/// The gradients of [`forward`]: dw and db, and dx where asked for, each image's gradient to the
/// convolution's output rebuilt in cache from the pooled one (for the input gradient, a second
/// time: cheaper than keeping a batch of them). `dconv` (as long as the convolution's output) is
/// written only where the shape has nothing to fuse.
#[allow(clippy::too_many_arguments)] // the op's operands, as in `forward`
pub fn backward(
    s: &Conv2dShape,
    (x, w): (&[f32], &[f32]),
    (argmax, y, dy): (&[u32], &[f32], &[f32]),
    dconv: &mut [f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let p = s.pool2x2();
    if !fusable(s) {
        pool::backward(&p, argmax, y, dy, dconv);
        conv::backward_weight(s, x, dconv, dw, db);
        if let Some(dx) = dx {
            conv::backward_input(s, w, dconv, dx);
        }
        return;
    }
    let (image_len, out_len) = (s.input_len() / s.batch, s.output_len() / s.batch);
    let pooled_len = p.output_len() / s.batch;
    // Image n's gradient to the convolution's output, into `dconv`.
    let unpool = |n: usize, dconv: &mut [f32]| {
        let image = n * pooled_len..(n + 1) * pooled_len;
        let outputs = (&argmax[image.clone()], &y[image.clone()], &dy[image]);
        pool::backward_planes(&p, n * s.out_channels, outputs, dconv);
    };
    let grad = WeightGrad::new(s);
    grad.sum_images(dw, db, |images, sums| {
        with_scratch(&CONV_OUT, out_len, |dconv| {
            for n in images {
                unpool(n, dconv);
                grad.add_image(&x[n * image_len..][..image_len], dconv, sums);
            }
        })
    });
    if let Some(dx) = dx {
        let input = InputGrad::new(s, w);
        dx.par_chunks_mut(image_len)
            .enumerate()
            .for_each(|(n, dx)| {
                with_scratch(&CONV_OUT, out_len, |dconv| {
                    unpool(n, dconv);
                    input.image(dconv, dx);
                })
            });
    }
}
