//! The `emulated` device's executor: runs a [`Launch`] on the CPU.
//!
//! build.rs compiles every `kernels/*.cu` with g++ against `cuda_emulator.h` (the CUDA built-ins
//! for the CPU) and links them with `cuda_emulator.cpp` (fibers and the block scheduler), plus a
//! generated table that finds each kernel by name and unpacks a `kernelParams`-shaped argument
//! array into its parameters. The kernels are compiled once per architecture they tell apart
//! (`EMULATOR_BUILDS`), and an emulated GPU of capability X runs the build NVRTC's code for X
//! would match: the newest not above X. Here we check the launch against the kernel's
//! signature, its `__launch_bounds__` and the emulated GPU's limits, then split its blocks across
//! the rayon threads.

pub(crate) mod graph;

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use rayon::prelude::*;

use crate::gpu_arch::{self, ComputeCapability};
use crate::launch::{KernelArg, Launch};
use crate::{Error, Result};

// Defines EMULATOR_BUILDS.
include!(concat!(env!("OUT_DIR"), "/emulator_builds.rs"));

extern "C" {
    fn hw_emulator_find(arch: u32, name: *const c_char) -> c_int;
    fn hw_emulator_params(kernel: c_int) -> *const c_char;
    fn hw_emulator_max_threads(kernel: c_int) -> u32;
    fn hw_emulator_run(
        kernel: c_int,
        grid: *const u32,
        block: *const u32,
        shared_bytes: u32,
        args: *const *mut c_void,
        first_block: u64,
        end_block: u64,
    ) -> c_int;
}

// hw_emulator_run's status codes (cuda_emulator.cpp).
const STATUS_BAD_CONFIG: c_int = 1;
const STATUS_DIVERGENT_BARRIER: c_int = 2;
const STATUS_OUT_OF_MEMORY: c_int = 3;
const STATUS_INCOMPLETE_MMA: c_int = 4;
const STATUS_BAD_ASYNC_COPY: c_int = 5;

/// The build of the kernels a GPU of capability `cc` runs: the newest not above it.
pub(crate) fn build_for(cc: ComputeCapability) -> u32 {
    EMULATOR_BUILDS
        .iter()
        .copied()
        .filter(|&arch| arch <= cc.arch())
        .max()
        .unwrap_or(EMULATOR_BUILDS[0])
}

/// Runs `launch` to completion on the CPU, as a GPU of capability `cc` would.
///
/// # Safety
/// Every pointer argument must address host memory that holds everything the kernel reads and
/// writes through it, and nothing else may use that memory while the kernel runs.
/// While a graph capture is under way on this thread, the launch is checked and recorded instead.
pub(crate) unsafe fn run(launch: &Launch, cc: ComputeCapability) -> Result<()> {
    launch.check_limits()?;
    gpu_arch::check_fits(launch, cc)?;
    let fail = |what: String| Error::Launch {
        kernel: launch.kernel.to_string(),
        what,
    };
    let name = CString::new(launch.kernel).map_err(|_| fail("name contains a NUL byte".into()))?;
    let kernel = unsafe { hw_emulator_find(build_for(cc), name.as_ptr()) };
    if kernel < 0 {
        let known = EMULATOR_BUILDS
            .iter()
            .any(|&arch| unsafe { hw_emulator_find(arch, name.as_ptr()) } >= 0);
        return Err(fail(if known {
            gpu_arch::missing_kernel(launch.kernel, cc)
        } else {
            "no kernel of that name in kernels/*.cu".into()
        }));
    }
    let params = unsafe { CStr::from_ptr(hw_emulator_params(kernel)) }.to_bytes();
    check_arguments(&launch.args, params).map_err(fail)?;
    let max_threads = unsafe { hw_emulator_max_threads(kernel) };
    let threads: u32 = launch.block.iter().product();
    if max_threads != 0 && threads > max_threads {
        return Err(fail(format!(
            "a block of {threads} threads is more than its __launch_bounds__({max_threads}) \
             allows: on a GPU the launch fails"
        )));
    }
    if graph::record(launch) {
        return Ok(());
    }

    let slots = launch.param_slots();
    let blocks = launch.grid.iter().map(|&n| n as u64).product::<u64>();
    let run_blocks = |first: u64, end: u64| {
        let pointers: Vec<*mut c_void> = slots
            .iter()
            .map(|slot| slot as *const u64 as *mut c_void)
            .collect();
        let status = unsafe {
            hw_emulator_run(
                kernel,
                launch.grid.as_ptr(),
                launch.block.as_ptr(),
                launch.shared_bytes,
                pointers.as_ptr(),
                first,
                end,
            )
        };
        match status {
            0 => Ok(()),
            STATUS_BAD_CONFIG => Err(fail("the emulator refused the launch configuration".into())),
            STATUS_DIVERGENT_BARRIER => Err(fail(
                "a warp barrier (shuffle or __syncwarp) waits for a lane that is waiting at \
                 __syncthreads: on a GPU this hangs"
                    .into(),
            )),
            STATUS_OUT_OF_MEMORY => {
                Err(fail("the emulator could not allocate fiber stacks".into()))
            }
            STATUS_INCOMPLETE_MMA => Err(fail(
                "an mma.sync was not reached by all 32 lanes of a warp: undefined on a GPU".into(),
            )),
            STATUS_BAD_ASYNC_COPY => Err(fail(
                "a cp.async was misaligned or read more bytes than it copies, or a thread had \
                 more than 64 copies or 8 groups in flight (the emulator's limit)"
                    .into(),
            )),
            other => Err(fail(format!("the emulator failed with status {other}"))),
        }
    };
    // A few chunks per thread evens out blocks of unequal cost; one block needs no pool.
    let chunks = (rayon::current_num_threads() as u64 * 4).min(blocks);
    if chunks <= 1 {
        return run_blocks(0, blocks);
    }
    (0..chunks)
        .into_par_iter()
        .try_for_each(|chunk| run_blocks(blocks * chunk / chunks, blocks * (chunk + 1) / chunks))
}

/// Compares the launch's arguments with the kernel's parameter kinds (`hw::param_kind`), so that
/// a launch builder and its kernel that disagree fail here rather than compute garbage.
fn check_arguments(args: &[KernelArg], params: &[u8]) -> Result<(), String> {
    if args.len() != params.len() {
        return Err(format!(
            "the kernel takes {} arguments, the launch passes {}",
            params.len(),
            args.len()
        ));
    }
    for (index, (arg, &param)) in args.iter().zip(params).enumerate() {
        let expected = match param {
            b'p' => "a pointer",
            b'i' => "an int",
            b'u' => "an unsigned int",
            b'f' => "a float",
            _ => "a type launches cannot pass (use pointers, int, unsigned or float)",
        };
        let matches = matches!(
            (arg, param),
            (KernelArg::Ptr(_), b'p')
                | (KernelArg::I32(_), b'i')
                | (KernelArg::U32(_), b'u')
                | (KernelArg::F32(_), b'f')
        );
        if !matches {
            return Err(format!(
                "argument {index} is {arg:?}, but the kernel's parameter is {expected}"
            ));
        }
    }
    Ok(())
}
