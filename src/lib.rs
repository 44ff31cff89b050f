//! Every op of handwritten, on every device.
//!
//! - [`reference`]: plain Rust, obviously correct; the oracle for every test.
//! - [`cpu`]: fast Rust (a packed AVX-512 SGEMM on image patches + threads); the `cpu` device.
//! - `kernels/*.cu`: CUDA C, compiled by build.rs twice: with NVRTC into PTX embedded here, run
//!   through cudarc on the `cuda` device; and with g++ into the CPU emulator (`emulator`, fibers
//!   for `__syncthreads`), the `emulated` device. Both run the same [`launch::Launch`]es.
//! - [`Device`] and [`Buffer`]: what the layers above call. Nothing above this crate knows which
//!   device runs an op.
//!
//! Layouts follow PyTorch: activations NCHW, conv weights `[out, in, kh, kw]`, linear weights
//! `[out, in]`, all f32.

pub mod cpu;
mod cuda;
mod data_launches;
mod device;
mod emulator;
mod error;
pub mod launch;
mod launches;
pub mod reference;
mod shapes;

pub use cuda::Gpu;
pub use device::{Buffer, Device, Element};
pub use error::{Error, Result};
pub use shapes::{AdamStep, Conv2dShape, LinearShape, Pool2dShape, Precision, XentShape};
