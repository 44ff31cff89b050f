//! A kernel launch, described once and run by whichever executor the device has: the GPU through
//! cudarc, or the CPU emulator. So the emulator checks the launch configuration and the argument
//! order too, not only the kernel bodies.

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
