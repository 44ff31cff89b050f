//! Every op of the device API against the reference ops (`src/reference.rs`), on every device
//! present: cpu, emulated and, where a GPU opens, cuda (`common::devices`; HANDWRITTEN_TEST_DEVICE
//! picks one). Each device gets the same shapes and the same inputs, and the reference runs once
//! per case, in f64. Closeness, one rule per precision (tests/common): fp32 within 1e-4 of the
//! largest exact result; TF32 within that of the reference fed TF32-rounded operands and within
//! 2^-10·Σ|a·b| of the plain one; ops that compute no sum (pooling, ReLU, gathers) exactly.
//! Outputs start as NaN, so an element an op forgets to write cannot pass.
//!
//! - `conv2d.rs`, `linear.rs`: forward, input and weight gradients in each precision, through the
//!   GEMM-shaped ops' harness and shapes in `tests/common/gemm.rs`, and what is particular to
//!   each; `gemm.rs`: their split sums, bit-identical from run to run;
//! - `pool_relu.rs`: max-pool with ReLU, forward and backward, and ReLU's backward;
//! - `conv_pool.rs`: a convolution and the pool after it as one op, equal to the two;
//! - `loss.rs`: softmax cross-entropy, forward and backward fused, padding rows included;
//! - `adam.rs`: Adam over many tensors at once;
//! - `data.rs`: gathering batches of images and labels, filling with zeros, copying;
//! - `graph.rs`: a captured graph replays what was recorded.

#[path = "../common/mod.rs"]
mod common;

mod adam;
mod conv2d;
mod conv_pool;
mod data;
mod gemm;
mod graph;
mod linear;
mod loss;
mod pool_relu;
