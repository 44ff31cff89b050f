//! The `cuda` device's executor: the kernels NVRTC compiled at build time, run through cudarc.
//!
//! One context and one stream per [`Gpu`]; everything is issued on that stream, so launches and
//! copies run in issue order and the host only waits in `synchronize` and `download`. cudarc
//! panics where a library is missing, so every entry point looks for the library first.

mod graph;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::driver::sys::{self as driver_sys, CUdevice_attribute_enum, CUfunction_attribute_enum};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::gpu_arch::{self, image_for, ComputeCapability, Image, KernelModule, KERNEL_MODULES};
use crate::launch::gemm::gemm_parts_len;
use crate::launch::Launch;
use crate::{Element, Error, Result};

/// The file of the self-test kernels: loaded only when a test launches one of them, so that the
/// trainer never loads them (one hangs a GPU on purpose).
const SELFTEST_FILE: &str = "kernels/selftest.cu";

/// Above this much dynamic shared memory CUDA wants the kernel opted in first.
const DEFAULT_SHARED_BYTES: u32 = 48 * 1024;

/// A GPU with the kernels loaded.
pub struct Gpu {
    stream: Arc<CudaStream>,
    /// Every kernel of every module but the self-tests, by name.
    functions: HashMap<&'static str, CudaFunction>,
    /// The self-test kernels, loaded on first use.
    selftest_functions: OnceLock<Result<HashMap<&'static str, CudaFunction>>>,
    identity: Identity,
    /// The kernel launched last: an asynchronous fault shows up at the next synchronisation,
    /// and this is the best guess of whose it is.
    last_kernel: Mutex<&'static str>,
    sm_count: usize,
    /// Where split GEMM sums write their partial products: allocated once, at its largest, so
    /// that no op allocates (a captured CUDA graph keeps its address). An op holds the lock while
    /// it issues its launches, so ops from several threads never interleave their parts.
    gemm_parts: Mutex<CudaSlice<f32>>,
    /// Whether a graph capture is under way on the stream (see graph.rs).
    capturing: AtomicBool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.identity)
    }
}

/// What a message about the GPU names: the GPU, its compute capability and the driver's CUDA
/// version.
#[derive(Clone, Debug)]
struct Identity {
    name: String,
    capability: ComputeCapability,
    /// `cuDriverGetVersion`: 12040 for CUDA 12.4.
    driver_version: i32,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (compute capability {}, driver for CUDA {}.{})",
            self.name,
            self.capability,
            self.driver_version / 1000,
            self.driver_version % 1000 / 10
        )
    }
}

/// The oldest driver the binary runs on: CUDA 12.0 (R525). The CUBINs come from a CUDA 12 NVRTC,
/// which every 12.x driver loads, and the driver functions called are those of 12.0.
const OLDEST_DRIVER: i32 = 12_000;

fn device_error(what: impl Into<String>) -> Error {
    Error::Device {
        device: "cuda".to_string(),
        what: what.into(),
    }
}

/// Turns a driver error into a device error that says what was being done.
fn driver(doing: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| device_error(format!("{doing}: {e}"))
}

impl Gpu {
    /// Whether this binary has GPU kernels and a CUDA driver that sees a GPU.
    pub fn is_available() -> bool {
        // SAFETY: only tries to open the library.
        gpu_arch::nvrtc_version().is_some()
            && unsafe { cudarc::driver::sys::is_culib_present() }
            && CudaContext::device_count().is_ok_and(|count| count > 0)
    }

    /// Opens GPU 0 and loads every kernel module.
    pub fn new() -> Result<Gpu> {
        if gpu_arch::nvrtc_version().is_none() {
            return Err(device_error(
                "this binary was built without NVRTC, so it has no GPU kernels; build it with \
                 libnvrtc on LD_LIBRARY_PATH (see .ci/run)",
            ));
        }
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(device_error("no CUDA driver (libcuda.so) found"));
        }
        let count = CudaContext::device_count().map_err(driver("cannot count GPUs"))?;
        if count == 0 {
            return Err(device_error("the CUDA driver sees no GPU"));
        }
        let ctx = CudaContext::new(0).map_err(driver("cannot open GPU 0"))?;
        // SAFETY: every buffer lives on the one stream below, which orders all uses of it; the
        // per-buffer events cudarc would otherwise record are pure overhead. Called before any
        // buffer exists.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver("cannot create a stream"))?;
        let name = ctx.name().unwrap_or_else(|_| "GPU 0".to_string());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("cannot read the compute capability"))?;
        let mut driver_version = 0;
        // SAFETY: writes one int.
        unsafe { driver_sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(driver("cannot read the driver's CUDA version"))?;
        let identity = Identity {
            name,
            capability: ComputeCapability::new(major.max(0) as u32, minor.max(0) as u32),
            driver_version,
        };
        let refuse = |why: String| {
            device_error(format!(
                "{identity}: {why}; this binary carries {}",
                gpu_arch::carried()
            ))
        };
        if let Some(why) = identity.capability.unsupported() {
            return Err(refuse(why));
        }
        if driver_version < OLDEST_DRIVER {
            return Err(refuse(
                "the driver is older than CUDA 12.0, the oldest the kernels were built for; \
                 update the NVIDIA driver to R525 or newer"
                    .to_string(),
            ));
        }
        let sm_count = ctx
            .attribute(CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("cannot read the number of SMs"))?
            .max(1) as usize;
        let gemm_parts = stream
            .alloc_zeros(gemm_parts_len(sm_count))
            .map_err(driver("cannot allocate the GEMM workspace"))?;
        let mut functions = HashMap::new();
        for module in KERNEL_MODULES.iter().filter(|m| m.file != SELFTEST_FILE) {
            functions.extend(load_functions(&ctx, module, &identity)?);
        }
        Ok(Gpu {
            stream,
            functions,
            selftest_functions: OnceLock::new(),
            identity,
            last_kernel: Mutex::new("(none yet)"),
            sm_count,
            gemm_parts: Mutex::new(gemm_parts),
            capturing: AtomicBool::new(false),
        })
    }

    /// The kernels of kernels/selftest.cu, loaded the first time one is asked for.
    fn selftest_functions(&self) -> Result<&HashMap<&'static str, CudaFunction>> {
        let loaded = self.selftest_functions.get_or_init(|| {
            match KERNEL_MODULES.iter().find(|m| m.file == SELFTEST_FILE) {
                Some(module) => load_functions(self.stream.context(), module, &self.identity),
                None => Ok(HashMap::new()),
            }
        });
        loaded.as_ref().map_err(|e| device_error(e.to_string()))
    }

    /// The number of streaming multiprocessors, as the driver reports it.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// The split GEMMs' workspace, locked for the launches of one op.
    pub(crate) fn gemm_parts(&self) -> MutexGuard<'_, CudaSlice<f32>> {
        self.gemm_parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The GPU's name, as the driver reports it.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// The GPU's compute capability.
    pub fn capability(&self) -> ComputeCapability {
        self.identity.capability
    }

    /// Issues one launch on the stream; it runs asynchronously.
    ///
    /// # Safety
    /// Every pointer argument must be the device address of a buffer on this GPU large enough for
    /// everything the kernel reads and writes through it.
    pub(crate) unsafe fn launch(&self, launch: &Launch) -> Result<()> {
        launch.check_limits()?;
        gpu_arch::check_fits(launch, self.capability())?;
        let fail = |what: String| Error::Launch {
            kernel: launch.kernel.to_string(),
            what,
        };
        let function = match self.functions.get(launch.kernel) {
            Some(function) => function,
            None => self
                .selftest_functions()?
                .get(launch.kernel)
                .ok_or_else(|| fail(gpu_arch::missing_kernel(launch.kernel, self.capability())))?,
        };
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| fail(format!("cannot make the GPU current on this thread: {e}")))?;
        if launch.shared_bytes > DEFAULT_SHARED_BYTES {
            function
                .set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    launch.shared_bytes as i32,
                )
                .map_err(|e| {
                    fail(format!(
                        "cannot allow {} bytes of shared memory: {e}",
                        launch.shared_bytes
                    ))
                })?;
        }
        let slots = launch.param_slots();
        let mut builder = self.stream.launch_builder(function);
        for slot in &slots {
            builder.arg(slot);
        }
        let config = LaunchConfig {
            grid_dim: launch.grid.into(),
            block_dim: launch.block.into(),
            shared_mem_bytes: launch.shared_bytes,
        };
        let previous = std::mem::replace(
            &mut *self.last_kernel.lock().unwrap_or_else(|e| e.into_inner()),
            launch.kernel,
        );
        // SAFETY: the caller vouches for the pointers; the scalars match the kernel's parameter
        // kinds (the emulator checks the same launches against the kernels' signatures).
        unsafe { builder.launch(config) }.map(|_| ()).map_err(|e| {
            fail(format!(
                "launch failed: {e} (a fault such as an illegal address is an earlier \
                 kernel's, reported late; the one launched before was {previous})"
            ))
        })
    }

    /// An error of an operation that waits for the stream: a kernel's fault (a bad address, say)
    /// surfaces here, so the message names the kernel launched last.
    fn async_error(&self, doing: &str, e: DriverError) -> Error {
        let kernel = *self.last_kernel.lock().unwrap_or_else(|e| e.into_inner());
        Error::Launch {
            kernel: kernel.to_string(),
            what: format!(
                "{doing} failed after this kernel, the last one launched: {e} (a kernel's fault \
                 is reported late; CUDA_LAUNCH_BLOCKING=1 reports it at its launch)"
            ),
        }
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| self.async_error("synchronize", e))
    }

    // Empty buffers stay on the host (see Device::zeros): CUDA does not allocate 0 bytes.

    pub(crate) fn zeros<T: Element>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(len)
            .map_err(|e| self.async_error(&format!("allocating {len} elements"), e))
    }

    pub(crate) fn upload<T: Element>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(data)
            .map_err(|e| self.async_error(&format!("uploading {} elements", data.len()), e))
    }

    pub(crate) fn write<T: Element>(&self, data: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        self.stream
            .memcpy_htod(data, dst)
            .map_err(|e| self.async_error(&format!("writing {} elements", data.len()), e))
    }

    pub(crate) fn download<T: Element>(&self, src: &CudaSlice<T>) -> Result<Vec<T>> {
        let doing = format!("downloading {} elements", src.len());
        let data = self
            .stream
            .clone_dtoh(src)
            .map_err(|e| self.async_error(&doing, e))?;
        // A copy into pageable memory is documented only as "might be synchronous": wait for it
        // to land before handing the data out.
        self.stream
            .synchronize()
            .map_err(|e| self.async_error(&doing, e))?;
        Ok(data)
    }

    pub(crate) fn memset_zero<T: Element>(&self, dst: &mut CudaSlice<T>) -> Result<()> {
        self.stream
            .memset_zeros(dst)
            .map_err(|e| self.async_error(&format!("zeroing {} elements", dst.len()), e))
    }

    pub(crate) fn copy<T: Element>(
        &self,
        src: &CudaSlice<T>,
        dst: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.stream
            .memcpy_dtod(src, dst)
            .map_err(|e| self.async_error(&format!("copying {} elements", src.len()), e))
    }

    /// Whether `slice` was allocated on this GPU's stream.
    pub(crate) fn owns<T>(&self, slice: &CudaSlice<T>) -> bool {
        Arc::ptr_eq(slice.stream(), &self.stream)
    }
}

/// Loads a module and finds each of the kernels it has for this GPU's architecture.
fn load_functions(
    ctx: &Arc<CudaContext>,
    module: &KernelModule,
    gpu: &Identity,
) -> Result<HashMap<&'static str, CudaFunction>> {
    let loaded = load_module(ctx, module, gpu)?;
    let mut functions = HashMap::new();
    for &kernel in module.kernels {
        match loaded.load_function(kernel) {
            Ok(function) => {
                functions.insert(kernel, function);
            }
            // A kernel of a newer architecture (a `_tf32` kernel on Turing) is not in this code;
            // a launch of it says so (Gpu::launch).
            Err(_) if !has_kernel(module, kernel, gpu.capability) => {}
            Err(e) => {
                return Err(Error::Launch {
                    kernel: kernel.to_string(),
                    what: format!("not found in the loaded module of {}: {e}", module.file),
                })
            }
        }
    }
    Ok(functions)
}

/// Whether the code a GPU of capability `cc` loads for `module` has `kernel`: ptxas reported it
/// for that CUBIN, or the PTX (which has every kernel) is what it loads.
fn has_kernel(module: &KernelModule, kernel: &str, cc: ComputeCapability) -> bool {
    let archs: Vec<u32> = module.cubins.iter().map(|c| c.arch).collect();
    match image_for(&archs, module.ptx_arch, cc) {
        Some(Image::Cubin(arch)) => gpu_arch::kernel_resources()
            .iter()
            .any(|r| r.kernel == kernel && r.arch == arch),
        Some(Image::Ptx) => true,
        None => false,
    }
}

/// Loads a module as a driver would pick its code: the CUBIN built for this GPU's architecture
/// (same major, the highest minor not above the GPU's), else the PTX, which the driver compiles
/// for the GPU at hand.
fn load_module(
    ctx: &Arc<CudaContext>,
    module: &KernelModule,
    gpu: &Identity,
) -> Result<Arc<CudaModule>> {
    let archs: Vec<u32> = module.cubins.iter().map(|c| c.arch).collect();
    let fail = |what: String| {
        device_error(format!(
            "{gpu}: cannot load {}: {what}; this binary carries {}",
            module.file,
            gpu_arch::carried()
        ))
    };
    match image_for(&archs, module.ptx_arch, gpu.capability) {
        Some(Image::Cubin(arch)) => {
            let cubin = module
                .cubins
                .iter()
                .find(|c| c.arch == arch)
                .expect("listed");
            ctx.load_module(Ptx::from_binary(cubin.image.to_vec()))
                .map_err(|e| fail(format!("its sm_{arch} CUBIN failed: {e}")))
        }
        Some(Image::Ptx) => ctx.load_module(Ptx::from_src(module.ptx)).map_err(|e| {
            let isa = gpu_arch::ptx_version(module.ptx)
                .map_or(String::new(), |(a, b)| format!(" (PTX ISA {a}.{b})"));
            fail(format!(
                "no CUBIN is built for this architecture and its compute_{} PTX{isa} failed: \
                 {e}; CUDA_ERROR_UNSUPPORTED_PTX_VERSION means the driver is older than that \
                 ISA",
                module.ptx_arch
            ))
        }),
        None => Err(fail(format!(
            "neither a CUBIN nor the compute_{} PTX runs on compute capability {}",
            module.ptx_arch, gpu.capability
        ))),
    }
}

/// The device address of a slice, as a kernel argument takes it.
pub(crate) fn device_address<T>(slice: &CudaSlice<T>) -> u64 {
    let (address, _no_event) = slice.device_ptr(slice.stream());
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The architecture a CUBIN was built for, from its ELF header's e_flags: bits 0-7 before
    /// ELF ABI version 8, bits 8-15 from it on (CUDA 12.8's CUBINs for sm_100 and newer).
    fn cubin_sm(image: &[u8]) -> u32 {
        assert_eq!(&image[..4], b"\x7fELF", "not an ELF file");
        let abi_version = image[8];
        let flags = u32::from_le_bytes(image[0x30..0x34].try_into().unwrap());
        if abi_version >= 8 {
            (flags >> 8) & 0xff
        } else {
            flags & 0xff
        }
    }

    /// Every module carries a CUBIN for each architecture people have and PTX of a CUDA 12 ISA
    /// (8.x: every CUDA 12 driver from the one of its NVRTC on loads it; a CUDA 13 ISA would need
    /// an R580 driver), targeting the oldest architecture that has all of its kernels.
    #[test]
    fn the_binary_carries_a_cubin_per_architecture_and_cuda_12_ptx() {
        let Some(nvrtc) = gpu_arch::nvrtc_version() else {
            eprintln!("skipped: built without NVRTC, no GPU code embedded");
            return;
        };
        let mut wanted = vec![75, 80, 86, 89, 90];
        if nvrtc >= (12, 8) {
            wanted.extend([100, 120]);
        }
        assert!(!KERNEL_MODULES.is_empty());
        for module in KERNEL_MODULES {
            let archs: Vec<u32> = module.cubins.iter().map(|c| c.arch).collect();
            for arch in &wanted {
                assert!(archs.contains(arch), "{}: no sm_{arch} CUBIN", module.file);
            }
            for cubin in module.cubins {
                assert_eq!(cubin_sm(cubin.image), cubin.arch, "{}", module.file);
            }
            let (major, _) = gpu_arch::ptx_version(module.ptx).expect("a .version line");
            assert_eq!(major, 8, "{}: PTX ISA of CUDA {major}", module.file);
            let tf32 = module.kernels.iter().any(|k| k.ends_with("_tf32"));
            let ptx_arch = if tf32 || module.file == SELFTEST_FILE {
                80
            } else {
                75
            };
            assert_eq!(module.ptx_arch, ptx_arch, "{}", module.file);
            assert!(
                module.ptx.contains(&format!(".target sm_{ptx_arch}")),
                "{}: PTX not for compute_{ptx_arch}",
                module.file
            );
            for kernel in module.kernels {
                assert!(
                    module.ptx.contains(&format!(".entry {kernel}(")),
                    "{}: kernel {kernel} missing from the PTX",
                    module.file
                );
            }
        }
    }

    /// ptxas reported every kernel on every architecture, but the TF32 kernels on Turing, which
    /// has no TF32 tensor cores.
    #[test]
    fn every_architecture_has_every_kernel_but_turing_the_tf32_ones() {
        if gpu_arch::nvrtc_version().is_none() {
            eprintln!("skipped: built without NVRTC");
            return;
        }
        for module in KERNEL_MODULES {
            for cubin in module.cubins {
                for kernel in module.kernels {
                    let reported = gpu_arch::kernel_resources()
                        .iter()
                        .any(|r| r.kernel == *kernel && r.arch == cubin.arch);
                    let needs_ampere = kernel.ends_with("_tf32")
                        || kernel.starts_with("selftest_cp_async")
                        || kernel.starts_with("selftest_mma");
                    let wanted = cubin.arch >= 80 || !needs_ampere;
                    assert_eq!(reported, wanted, "{kernel} on sm_{}", cubin.arch);
                }
            }
        }
    }

    /// No kernel spills registers to local memory on any architecture, and each fits a block of
    /// the 256 threads the ops launch: registers x 256 within a block's 65,536, and its static
    /// shared memory within the 48 KiB a kernel may declare. (The emulator checks every actual
    /// launch against the architecture it plays.)
    #[test]
    fn no_kernel_spills_and_each_fits_its_block_on_every_architecture() {
        if gpu_arch::nvrtc_version().is_none() {
            eprintln!("skipped: built without NVRTC");
            return;
        }
        let resources = gpu_arch::kernel_resources();
        assert!(resources.len() > 7 * 30, "{} reports", resources.len());
        for r in resources {
            assert_eq!(
                (r.spill_stores, r.spill_loads),
                (0, 0),
                "{} spills on sm_{}",
                r.kernel,
                r.arch
            );
            assert!(
                r.registers as u64 * 256 <= gpu_arch::REGISTERS_PER_BLOCK,
                "{} on sm_{}: {} registers",
                r.kernel,
                r.arch,
                r.registers
            );
            assert!(
                r.shared_bytes as u64 <= gpu_arch::STATIC_SHARED_BYTES,
                "{} on sm_{}: {} bytes of static shared memory",
                r.kernel,
                r.arch,
                r.shared_bytes
            );
        }
    }

    /// The GEMM kernels' source, gemm.cuh included.
    const GEMM_SOURCES: [(&str, &str); 3] = [
        ("kernels/gemm.cuh", include_str!("../../kernels/gemm.cuh")),
        ("kernels/conv2d.cu", include_str!("../../kernels/conv2d.cu")),
        ("kernels/linear.cu", include_str!("../../kernels/linear.cu")),
    ];

    /// Split sums go through a workspace and a fixed-order second pass, so that runs are
    /// bit-reproducible: no GEMM kernel may add atomically.
    #[test]
    fn gemm_kernels_use_no_atomics() {
        for (file, source) in GEMM_SOURCES {
            // atomicAdd, atomicCAS, atomicExch, ...
            let calls = source.match_indices("atomic").filter(|(at, _)| {
                source[at + "atomic".len()..].starts_with(|c: char| c.is_ascii_uppercase())
            });
            assert_eq!(calls.count(), 0, "{file} uses an atomic");
        }
        if gpu_arch::nvrtc_version().is_none() {
            eprintln!("skipped the PTX half: built without NVRTC");
            return;
        }
        for module in gemm_modules() {
            for line in module.ptx.lines().map(str::trim) {
                assert!(
                    !line.starts_with("atom.") && !line.starts_with("red."),
                    "{}: {line}",
                    module.file
                );
            }
        }
    }

    /// Every `_tf32` kernel runs on the tensor cores: its PTX has the m16n8k8 TF32 mma, rounds
    /// its operands with cvt.rna and stages them with cp.async; the fp32 kernels have no mma.
    #[test]
    fn tf32_kernels_multiply_on_tensor_cores() {
        if gpu_arch::nvrtc_version().is_none() {
            eprintln!("skipped: built without NVRTC, no PTX embedded");
            return;
        }
        let mut tf32_kernels = 0;
        for module in gemm_modules() {
            for body in module.ptx.split(".entry ").skip(1) {
                let name = &body[..body.find('(').unwrap()];
                let mma = body.contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32");
                if name.ends_with("_tf32") {
                    tf32_kernels += 1;
                    assert!(mma, "{name} has no TF32 mma.sync");
                    assert!(body.contains("cvt.rna.tf32.f32"), "{name} rounds nothing");
                    assert!(
                        body.contains("cp.async.wait_group"),
                        "{name} has no cp.async"
                    );
                } else {
                    assert!(!mma, "{name} is not a TF32 kernel but uses mma.sync");
                }
            }
        }
        assert_eq!(tf32_kernels, 6, "a TF32 version of each of the six passes");
    }

    /// The self-tests are found by file name to be left out of Gpu::new.
    #[test]
    fn the_selftest_module_is_the_one_left_to_load_on_demand() {
        if gpu_arch::nvrtc_version().is_none() {
            eprintln!("skipped: built without NVRTC, no modules embedded");
            return;
        }
        let selftest = KERNEL_MODULES.iter().find(|m| m.file == SELFTEST_FILE);
        let selftest = selftest.expect("kernels/selftest.cu among the modules");
        assert!(selftest.kernels.iter().all(|k| k.starts_with("selftest_")));
        let others = KERNEL_MODULES.iter().filter(|m| m.file != SELFTEST_FILE);
        assert!(others
            .flat_map(|m| m.kernels)
            .all(|k| !k.starts_with("selftest_")));
    }

    fn gemm_modules() -> impl Iterator<Item = &'static KernelModule> {
        KERNEL_MODULES
            .iter()
            .filter(|m| m.file.ends_with("conv2d.cu") || m.file.ends_with("linear.cu"))
    }
}
