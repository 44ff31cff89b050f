//! A kernel launch, described once and run by whichever executor the device has: the GPU through
//! cudarc, or the CPU emulator. So the emulator checks the launch configuration and the argument
//! order too, not only the kernel bodies.
//!
//! One file per kernel family, as in `kernels/`, says how each of its kernels is launched: grid,
//! block, shared memory and argument order. The arguments follow each kernel's C signature
//! exactly. Sizes travel as `int`: every index a kernel computes is below the length of some
//! buffer, so buffers must hold fewer than 2³¹ elements.

pub(crate) mod adam;
pub(crate) mod conv2d;
pub(crate) mod data;
pub(crate) mod gemm;
pub(crate) mod linear;
pub(crate) mod maxpool;
pub(crate) mod relu;
pub(crate) mod softmax_xent;

use crate::{Error, Result};

/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;

fn int(v: usize) -> KernelArg {
    KernelArg::I32(v as i32)
}

/// One argument of a kernel, as the kernel's C signature takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    /// A device pointer (the address of a buffer's first element).
    Ptr(u64),
    I32(i32),
    U32(u32),
    F32(f32),
}

/// Everything cuLaunchKernel needs, but the module: the kernel is found by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    pub args: Vec<KernelArg>,
}

impl Launch {
    /// A 1-D launch of `threads` threads in blocks of `block`.
    pub fn linear(
        kernel: &'static str,
        threads: usize,
        block: u32,
        args: Vec<KernelArg>,
    ) -> Launch {
        let blocks = threads.div_ceil(block as usize).max(1) as u32;
        Launch {
            kernel,
            grid: [blocks, 1, 1],
            block: [block, 1, 1],
            shared_bytes: 0,
            args,
        }
    }
}

/// The most dynamic shared memory one block may ask for on a GPU of compute capability 9.0.
/// (Above 48 KiB the cuda executor opts the kernel in first, as CUDA requires.)
pub const MAX_SHARED_BYTES: u32 = 227 * 1024;
/// The most threads one block may have.
pub const MAX_BLOCK_THREADS: u32 = 1024;

impl Launch {
    /// Checks the configuration against the GPU's limits, so that a bad launch fails the same way
    /// on the emulator as on the GPU, with a message that says which limit.
    pub fn check_limits(&self) -> Result<()> {
        let [gx, gy, gz] = self.grid;
        let [bx, by, bz] = self.block;
        let threads = bx as u64 * by as u64 * bz as u64;
        let problem =
            if gx == 0 || gy == 0 || gz == 0 || gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
                format!(
                    "grid {:?} is outside 1..=2^31-1 × 1..=65535 × 1..=65535",
                    self.grid
                )
            } else if bx == 0 || by == 0 || bz == 0 || bx > 1024 || by > 1024 || bz > 64 {
                format!(
                    "block {:?} is outside 1..=1024 × 1..=1024 × 1..=64",
                    self.block
                )
            } else if threads > MAX_BLOCK_THREADS as u64 {
                format!(
                    "block {:?} has {threads} threads, more than {MAX_BLOCK_THREADS}",
                    self.block
                )
            } else if self.shared_bytes > MAX_SHARED_BYTES {
                format!(
                    "asks for {} bytes of dynamic shared memory, more than {MAX_SHARED_BYTES}",
                    self.shared_bytes
                )
            } else {
                return Ok(());
            };
        Err(Error::Launch {
            kernel: self.kernel.to_string(),
            what: problem,
        })
    }

    /// Each argument's value in an 8-byte little-endian slot: what cuLaunchKernel's
    /// `kernelParams` points at (a 4-byte parameter reads the slot's first 4 bytes).
    pub(crate) fn param_slots(&self) -> Vec<u64> {
        self.args
            .iter()
            .map(|arg| match *arg {
                KernelArg::Ptr(address) => address,
                KernelArg::I32(value) => value as u32 as u64,
                KernelArg::U32(value) => value as u64,
                KernelArg::F32(value) => value.to_bits() as u64,
            })
            .collect()
    }
}
