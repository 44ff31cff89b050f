//! GPU architectures: what a compute capability allows, and what this binary carries for it.
//!
//! build.rs compiles every `kernels/*.cu` into a CUBIN per architecture (sm_75 ... sm_120, where
//! the NVRTC knows them) and PTX of the oldest architecture that has all of the file's kernels,
//! and records ptxas's report of every kernel's registers, spills and shared memory. Here the
//! cuda executor picks what to load ([`image_for`]), and both executors check a launch against
//! the resources of the code that would run it ([`check_fits`]).

use std::fmt;

use crate::launch::Launch;
use crate::{Error, Precision, Result};

/// A GPU's compute capability, major.minor (9.0 for an H100 or H200).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComputeCapability {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Registers one block may hold, on every architecture from Turing to Blackwell.
pub const REGISTERS_PER_BLOCK: u64 = 65_536;
/// Static shared memory a kernel may declare; more must be dynamic, and opted in.
pub const STATIC_SHARED_BYTES: u64 = 48 * 1024;

impl ComputeCapability {
    /// The oldest GPUs the kernels run on: Turing (T4, RTX 20).
    pub const OLDEST: ComputeCapability = ComputeCapability::new(7, 5);
    /// The first with TF32 tensor cores and cp.async: Ampere (A100).
    pub const AMPERE: ComputeCapability = ComputeCapability::new(8, 0);
    /// What the emulated device plays unless `HANDWRITTEN_EMULATED_CC` says otherwise: an H100.
    pub const EMULATED_DEFAULT: ComputeCapability = ComputeCapability::new(9, 0);

    pub const fn new(major: u32, minor: u32) -> ComputeCapability {
        ComputeCapability { major, minor }
    }

    /// As in `sm_75` and `__CUDA_ARCH__ / 10`.
    pub fn arch(self) -> u32 {
        self.major * 10 + self.minor
    }

    fn from_arch(arch: u32) -> ComputeCapability {
        ComputeCapability::new(arch / 10, arch % 10)
    }

    /// Reads `7.5`; None for anything else.
    pub fn parse(text: &str) -> Option<ComputeCapability> {
        let (major, minor) = text.trim().split_once('.')?;
        let single_digit = |s: &str| s.len() == 1 || (s.len() == 2 && !s.starts_with('0'));
        if !single_digit(major) || minor.len() != 1 {
            return None;
        }
        Some(ComputeCapability::new(
            major.parse().ok()?,
            minor.parse().ok()?,
        ))
    }

    /// TF32 tensor cores (`mma.sync ... tf32`) exist from 8.0 on.
    pub fn has_tf32(self) -> bool {
        self >= ComputeCapability::AMPERE
    }

    /// The precision a GPU of this capability trains in unless told otherwise: TF32 where it has
    /// tensor cores for it, as PyTorch convolves, else exact fp32.
    pub fn default_precision(self) -> Precision {
        if self.has_tf32() {
            Precision::Tf32
        } else {
            Precision::Fp32
        }
    }

    /// The most shared memory (static and dynamic together) one block may use here, opted in: the
    /// CUDA programming guide's table of technical specifications. Capabilities newer than the
    /// table get the smallest of its recent ones.
    pub fn max_shared_per_block(self) -> u64 {
        let kib = match (self.major, self.minor) {
            (7, 5) => 64,
            (8, 0) | (8, 7) => 163,
            (9, _) | (10, _) | (11, _) => 227,
            _ => 99,
        };
        kib * 1024
    }

    /// Threads one SM holds at once (the programming guide's table).
    pub fn max_threads_per_sm(self) -> u64 {
        match (self.major, self.minor) {
            (7, 5) => 1024,
            (8, 6) | (8, 9) | (12, _) => 1536,
            _ => 2048,
        }
    }

    /// Why the kernels cannot run on a GPU of this capability, if they cannot.
    pub fn unsupported(self) -> Option<String> {
        (self < ComputeCapability::OLDEST).then(|| {
            format!(
                "compute capability {self} is older than the kernels support: they need {} \
                 (Turing) or newer",
                ComputeCapability::OLDEST
            )
        })
    }
}

/// One `kernels/*.cu` file as the binary carries it.
pub(crate) struct KernelModule {
    pub file: &'static str,
    /// Every kernel the file declares (some exist only from some architecture on).
    pub kernels: &'static [&'static str],
    /// The PTX's target, `compute_NN`: the oldest architecture that has all of `kernels`.
    pub ptx_arch: u32,
    pub ptx: &'static str,
    pub cubins: &'static [Cubin],
}

/// SASS for one architecture, `sm_NN`.
pub(crate) struct Cubin {
    pub arch: u32,
    pub image: &'static [u8],
}

/// ptxas's report of one kernel compiled for one architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub kernel: &'static str,
    /// `sm_NN`'s NN.
    pub arch: u32,
    pub registers: u32,
    /// Static shared memory.
    pub shared_bytes: u32,
    /// The stack frame: local memory for arrays and spills.
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

// Defines NVRTC_VERSION, KERNEL_MODULES and KERNEL_RESOURCES.
include!(concat!(env!("OUT_DIR"), "/kernel_modules.rs"));

/// The version of the NVRTC that compiled the embedded kernels, None when the binary has none.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    NVRTC_VERSION
}

/// The architectures the binary carries CUBINs for (the same for every file), as `sm_NN`'s NN.
pub fn cubin_archs() -> Vec<u32> {
    KERNEL_MODULES
        .first()
        .map(|module| module.cubins.iter().map(|cubin| cubin.arch).collect())
        .unwrap_or_default()
}

/// ptxas's report of every kernel on every architecture.
pub fn kernel_resources() -> &'static [KernelResources] {
    KERNEL_RESOURCES
}

/// The PTX ISA version of the embedded PTX (`.version 8.7`), None without kernels.
pub fn ptx_isa() -> Option<(u32, u32)> {
    KERNEL_MODULES
        .first()
        .and_then(|module| ptx_version(module.ptx))
}

pub(crate) fn ptx_version(ptx: &str) -> Option<(u32, u32)> {
    let version = ptx
        .lines()
        .find_map(|line| line.trim().strip_prefix(".version "))?;
    let (major, minor) = version.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// One line naming what the binary carries, for error messages.
pub fn carried() -> String {
    let Some((major, minor)) = NVRTC_VERSION else {
        return "no GPU code (built without NVRTC)".to_string();
    };
    let cubins: Vec<String> = cubin_archs().iter().map(|a| format!("sm_{a}")).collect();
    let ptx: Vec<String> = {
        let mut archs: Vec<u32> = KERNEL_MODULES.iter().map(|m| m.ptx_arch).collect();
        archs.sort_unstable();
        archs.dedup();
        archs.iter().map(|a| format!("compute_{a}")).collect()
    };
    let isa = ptx_isa().map_or(String::new(), |(a, b)| format!(", ISA {a}.{b}"));
    format!(
        "CUBINs for {} and PTX for {}{isa} (NVRTC {major}.{minor})",
        cubins.join(", "),
        ptx.join(" and ")
    )
}

/// Why a launch finds no kernel of its name in the code for a GPU of capability `cc`.
pub(crate) fn missing_kernel(kernel: &str, cc: ComputeCapability) -> String {
    let declared = KERNEL_MODULES.iter().any(|m| m.kernels.contains(&kernel));
    if declared || (kernel.ends_with("_tf32") && !cc.has_tf32()) {
        format!(
            "not built for compute capability {cc}: the kernel needs a newer GPU (TF32 tensor \
             cores and cp.async need {})",
            ComputeCapability::AMPERE
        )
    } else {
        "no kernel of that name in kernels/*.cu".to_string()
    }
}

/// What the driver should load for one file on a GPU of capability `cc`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Image {
    /// The CUBIN of this architecture.
    Cubin(u32),
    /// The PTX, compiled by the driver for the GPU at hand.
    Ptx,
}

/// The code a driver would pick: the CUBIN of the GPU's major version with the highest minor not
/// above the GPU's (SASS runs only within one major version, on the same or a later minor), else
/// the PTX where its target is not above the GPU; None where neither runs.
pub(crate) fn image_for(cubins: &[u32], ptx_arch: u32, cc: ComputeCapability) -> Option<Image> {
    let cubin = cubins
        .iter()
        .map(|&arch| ComputeCapability::from_arch(arch))
        .filter(|built| built.major == cc.major && built.minor <= cc.minor)
        .max();
    match cubin {
        Some(built) => Some(Image::Cubin(built.arch())),
        None if ptx_arch <= cc.arch() => Some(Image::Ptx),
        None => None,
    }
}

/// ptxas's report for `kernel` as a GPU of capability `cc` runs it: from the CUBIN it loads, or,
/// where it JIT-compiles the PTX, from the newest CUBIN below it (the nearest estimate).
pub(crate) fn resources_for(
    kernel: &str,
    cc: ComputeCapability,
) -> Option<&'static KernelResources> {
    let archs = cubin_archs();
    let arch = match image_for(&archs, 0, cc)? {
        Image::Cubin(arch) => arch,
        Image::Ptx => archs.into_iter().filter(|&a| a <= cc.arch()).max()?,
    };
    KERNEL_RESOURCES
        .iter()
        .find(|r| r.kernel == kernel && r.arch == arch)
}

/// How many blocks of `threads` threads of `kernel` one SM of a GPU of capability `cc` holds at
/// once, from ptxas's report: limited by registers (allocated per warp in steps of 8 per thread,
/// 65,536 per SM), by threads, and by shared memory (each block also reserves 1 KiB). None
/// without a report.
pub(crate) fn resident_blocks(kernel: &str, threads: u32, cc: ComputeCapability) -> Option<usize> {
    let r = resources_for(kernel, cc)?;
    Some(occupancy(r.registers, r.shared_bytes, threads, cc))
}

fn occupancy(registers: u32, shared_bytes: u32, threads: u32, cc: ComputeCapability) -> usize {
    let warps = (threads as u64).div_ceil(32).max(1);
    let registers_per_block = (registers as u64).div_ceil(8) * 8 * 32 * warps;
    let by_registers = REGISTERS_PER_BLOCK / registers_per_block.max(1);
    let by_threads = cc.max_threads_per_sm() / (threads as u64).max(1);
    let shared_per_sm = cc.max_shared_per_block() + 1024;
    let by_shared = shared_per_sm / (shared_bytes as u64 + 1024);
    by_registers.min(by_threads).min(by_shared) as usize
}

/// Checks that `launch` fits a GPU of capability `cc`: its block's registers (ptxas's count for
/// that GPU's code times the threads) and its shared memory (static and dynamic). A launch that
/// does not fit fails on the GPU with "too many resources requested for launch"; here it fails
/// the same way on the emulator, with the numbers. Without a ptxas report (a binary built without
/// NVRTC) only the dynamic shared memory is checked.
pub fn check_fits(launch: &Launch, cc: ComputeCapability) -> Result<()> {
    let threads: u64 = launch.block.iter().map(|&n| n as u64).product();
    let resources = resources_for(launch.kernel, cc);
    let registers = resources.map_or(0, |r| r.registers as u64);
    let static_shared = resources.map_or(0, |r| r.shared_bytes as u64);
    let shared = static_shared + launch.shared_bytes as u64;
    let problem = if registers * threads > REGISTERS_PER_BLOCK {
        format!(
            "{threads} threads of {registers} registers need {} registers, more than the \
             {REGISTERS_PER_BLOCK} a block has on compute capability {cc}",
            registers * threads
        )
    } else if shared > cc.max_shared_per_block() {
        format!(
            "{static_shared} bytes of static and {} of dynamic shared memory are more than the {} \
             a block may have on compute capability {cc}",
            launch.shared_bytes,
            cc.max_shared_per_block()
        )
    } else {
        return Ok(());
    };
    Err(Error::Launch {
        kernel: launch.kernel.to_string(),
        what: problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUBINS: [u32; 7] = [75, 80, 86, 89, 90, 100, 120];

    fn cc(major: u32, minor: u32) -> ComputeCapability {
        ComputeCapability::new(major, minor)
    }

    #[test]
    fn the_loader_picks_the_cubin_a_driver_would_and_else_the_ptx() {
        let cases = [
            (cc(7, 5), Some(Image::Cubin(75))),
            (cc(8, 0), Some(Image::Cubin(80))),
            (cc(8, 6), Some(Image::Cubin(86))),
            (cc(8, 7), Some(Image::Cubin(86))), // Jetson Orin: the highest 8.x minor not above 7
            (cc(8, 9), Some(Image::Cubin(89))),
            (cc(9, 0), Some(Image::Cubin(90))),
            (cc(10, 0), Some(Image::Cubin(100))),
            (cc(10, 3), Some(Image::Cubin(100))),
            (cc(12, 0), Some(Image::Cubin(120))),
            (cc(12, 1), Some(Image::Cubin(120))),
            (cc(11, 0), Some(Image::Ptx)), // no 11.x CUBIN: the PTX, JIT-compiled
            (cc(13, 0), Some(Image::Ptx)),
            (cc(7, 0), None), // Volta: older than the PTX's target
        ];
        for (gpu, want) in cases {
            assert_eq!(
                image_for(&CUBINS, 80, gpu),
                want,
                "compute capability {gpu}"
            );
        }
        // A CUBIN never crosses majors: with only sm_75 built, 8.6 takes the PTX.
        assert_eq!(image_for(&[75], 75, cc(8, 6)), Some(Image::Ptx));
        assert_eq!(image_for(&[80], 80, cc(7, 5)), None);
    }

    #[test]
    fn capabilities_parse_and_order() {
        assert_eq!(ComputeCapability::parse("7.5"), Some(cc(7, 5)));
        assert_eq!(ComputeCapability::parse("12.0"), Some(cc(12, 0)));
        for bad in ["", "7", "7.", ".5", "7.50", "x.5", "07.5", "-7.5", "7.5.1"] {
            assert_eq!(ComputeCapability::parse(bad), None, "{bad:?}");
        }
        assert!(cc(7, 5) < cc(8, 0) && cc(9, 0) < cc(10, 0));
        assert!(!cc(7, 5).has_tf32() && cc(8, 0).has_tf32());
        assert_eq!(cc(7, 5).default_precision(), Precision::Fp32);
        assert_eq!(cc(8, 6).default_precision(), Precision::Tf32);
        assert!(cc(6, 1).unsupported().unwrap().contains("7.5"));
        assert_eq!(cc(7, 5).unsupported(), None);
    }

    /// Blocks per SM, as the CUDA occupancy calculator counts them for the GEMM kernels' 256
    /// threads and 16,640 bytes of shared memory.
    #[test]
    fn occupancy_is_limited_by_registers_threads_and_shared_memory() {
        let hopper = cc(9, 0);
        assert_eq!(occupancy(64, 16_640, 256, hopper), 4); // 64 x 256 x 4 = 65,536 registers
        assert_eq!(occupancy(63, 16_640, 256, hopper), 4); // allocated as 64
        assert_eq!(occupancy(96, 16_640, 256, hopper), 2);
        assert_eq!(occupancy(32, 16_640, 256, hopper), 8); // 2,048 threads
        assert_eq!(occupancy(32, 16_640, 256, cc(7, 5)), 3); // 65 KiB of shared memory
        assert_eq!(occupancy(16, 0, 256, cc(8, 6)), 6); // 1,536 threads
    }

    /// A launch that would need more registers or shared memory than a block has is refused,
    /// naming the numbers.
    #[test]
    fn launches_are_checked_against_registers_and_shared_memory() {
        let launch = |kernel: &'static str, threads: u32, shared_bytes: u32| Launch {
            kernel,
            grid: [1, 1, 1],
            block: [threads, 1, 1],
            shared_bytes,
            args: vec![],
        };
        let turing = cc(7, 5);
        let error = check_fits(&launch("relu_backward", 1, 65 * 1024), turing).unwrap_err();
        assert!(error.to_string().contains("shared memory"), "{error}");
        assert!(check_fits(&launch("relu_backward", 1, 64 * 1024), cc(9, 0)).is_ok());
        let Some(gemm) = KERNEL_RESOURCES
            .iter()
            .find(|r| r.kernel == "conv2d_forward")
        else {
            eprintln!("skipped the register half: built without NVRTC");
            return;
        };
        let gpu = ComputeCapability::from_arch(gemm.arch);
        let too_many = (REGISTERS_PER_BLOCK / gemm.registers as u64 + 1) as u32;
        let error = check_fits(&launch("conv2d_forward", too_many, 0), gpu).unwrap_err();
        assert!(error.to_string().contains("registers"), "{error}");
        assert!(check_fits(&launch("conv2d_forward", too_many - 1, 0), gpu).is_ok());
    }
}
