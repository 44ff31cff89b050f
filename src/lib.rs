//! Every op of handwritten, on every device.
//!
//! - [`reference`]: plain Rust, obviously correct; the oracle for every test.
//! - [`cpu`]: fast Rust (a packed AVX-512 SGEMM on image patches + threads); the `cpu` device.
//! - `kernels/*.cu`: CUDA C, compiled by build.rs twice: with NVRTC into PTX embedded here, run
//!   through cudarc on the `cuda` device; and with g++ into the CPU emulator (`emulator`, fibers
//!   for `__syncthreads`), the `emulated` device. Both run the same [`launch::Launch`]es.
//! - [`gemm_lab`]: the GEMM kernel's history, from one thread per output to tensor cores, kept
//!   runnable side by side (docs/gemm.md); [`cpu_gemm_lab`], the same for the cpu device's
//!   product, from the triple loop to packed AVX2 tiles (docs/cpu-gemm.md).
//! - [`Device`] and [`Buffer`]: what the layers above call. Nothing above this crate knows which
//!   device runs an op.
//!
//! Layouts follow PyTorch: activations NCHW, conv weights `[out, in, kh, kw]`, linear weights
//! `[out, in]`, all f32.

pub mod cpu;
pub mod cpu_gemm_lab;
mod cuda;
mod device;
mod emulator;
mod error;
pub mod gemm_lab;
pub mod gpu_arch;
pub mod launch;
pub mod reference;
mod shapes;

pub use cpu::gemm::CPU_ISA_VARIABLE;
pub use cuda::Gpu;
pub use device::{Buffer, Device, Element, Graph, TensorTable, EMULATED_CC_VARIABLE};
pub use error::{Error, Result};
pub use gpu_arch::ComputeCapability;
pub use shapes::{
    Activation, AdamHyper, AdamStep, Conv2dShape, LinearShape, Pool2dShape, Precision, XentShape,
    IGNORE_LABEL, PAD_INDEX,
};
