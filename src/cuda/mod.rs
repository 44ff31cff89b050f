//! The `cuda` device's executor: the kernels NVRTC compiled at build time, run through cudarc.
//!
//! One context and one stream per [`Gpu`]; everything is issued on that stream, so launches and
//! copies run in issue order and the host only waits in `synchronize` and `download`. cudarc
//! panics where a library is missing, so every entry point looks for the library first.

mod graph;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::driver::sys::{CUdevice_attribute_enum, CUfunction_attribute_enum};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::launch::gemm::gemm_parts_len;
use crate::launch::Launch;
use crate::{Element, Error, Result};

/// The PTX (and CUBIN) of one `kernels/*.cu` file, embedded by build.rs.
pub(crate) struct KernelModule {
    pub file: &'static str,
    pub kernels: &'static [&'static str],
    pub ptx: &'static str,
    pub cubin: &'static [u8],
}

// Defines NVRTC_VERSION and KERNEL_MODULES.
include!(concat!(env!("OUT_DIR"), "/kernel_modules.rs"));

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
    capability: (i32, i32),
    /// The kernel launched last: an asynchronous fault shows up at the next synchronisation,
    /// and this is the best guess of whose it is.
    last_kernel: Mutex<&'static str>,
    name: String,
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
        write!(f, "Gpu({})", self.name)
    }
}

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
        NVRTC_VERSION.is_some()
            && unsafe { cudarc::driver::sys::is_culib_present() }
            && CudaContext::device_count().is_ok_and(|count| count > 0)
    }

    /// Opens GPU 0 and loads every kernel module.
    pub fn new() -> Result<Gpu> {
        if NVRTC_VERSION.is_none() {
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
        let capability = ctx
            .compute_capability()
            .map_err(driver("cannot read the compute capability"))?;
        let sm_count = ctx
            .attribute(CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("cannot read the number of SMs"))?
            .max(1) as usize;
        let gemm_parts = stream
            .alloc_zeros(gemm_parts_len(sm_count))
            .map_err(driver("cannot allocate the GEMM workspace"))?;
        let mut functions = HashMap::new();
        for module in KERNEL_MODULES.iter().filter(|m| m.file != SELFTEST_FILE) {
            functions.extend(load_functions(&ctx, module, capability)?);
        }
        Ok(Gpu {
            stream,
            functions,
            selftest_functions: OnceLock::new(),
            capability,
            last_kernel: Mutex::new("(none yet)"),
            name,
            sm_count,
            gemm_parts: Mutex::new(gemm_parts),
            capturing: AtomicBool::new(false),
        })
    }

    /// The kernels of kernels/selftest.cu, loaded the first time one is asked for.
    fn selftest_functions(&self) -> Result<&HashMap<&'static str, CudaFunction>> {
        let loaded = self.selftest_functions.get_or_init(|| {
            match KERNEL_MODULES.iter().find(|m| m.file == SELFTEST_FILE) {
                Some(module) => load_functions(self.stream.context(), module, self.capability),
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
        &self.name
    }

    /// Issues one launch on the stream; it runs asynchronously.
    ///
    /// # Safety
    /// Every pointer argument must be the device address of a buffer on this GPU large enough for
    /// everything the kernel reads and writes through it.
    pub(crate) unsafe fn launch(&self, launch: &Launch) -> Result<()> {
        launch.check_limits()?;
        let fail = |what: String| Error::Launch {
            kernel: launch.kernel.to_string(),
            what,
        };
        let function = match self.functions.get(launch.kernel) {
            Some(function) => function,
            None => self
                .selftest_functions()?
                .get(launch.kernel)
                .ok_or_else(|| fail("no kernel of that name in kernels/*.cu".to_string()))?,
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

/// Loads a module and finds each of its kernels.
fn load_functions(
    ctx: &Arc<CudaContext>,
    module: &KernelModule,
    capability: (i32, i32),
) -> Result<HashMap<&'static str, CudaFunction>> {
    let loaded = load_module(ctx, module, capability)?;
    module
        .kernels
        .iter()
        .map(|&kernel| {
            let function = loaded.load_function(kernel).map_err(|e| Error::Launch {
                kernel: kernel.to_string(),
                what: format!("not found in the loaded module of {}: {e}", module.file),
            })?;
            Ok((kernel, function))
        })
        .collect()
}

/// Loads a module from its CUBIN where the GPU is exactly sm_90, else from its PTX (which the
/// driver compiles for the GPU at hand).
fn load_module(
    ctx: &Arc<CudaContext>,
    module: &KernelModule,
    capability: (i32, i32),
) -> Result<Arc<CudaModule>> {
    let mut cubin_error = String::new();
    if capability == (9, 0) {
        match ctx.load_module(Ptx::from_binary(module.cubin.to_vec())) {
            Ok(loaded) => return Ok(loaded),
            Err(e) => cubin_error = format!(" (its sm_90 CUBIN failed first: {e})"),
        }
    }
    ctx.load_module(Ptx::from_src(module.ptx)).map_err(|e| {
        device_error(format!(
            "cannot load the PTX of {} (compute capability {}.{}): {e}{cubin_error}; \
             CUDA_ERROR_UNSUPPORTED_PTX_VERSION means the driver is older than the NVRTC the \
             kernels were compiled with ({:?})",
            module.file, capability.0, capability.1, NVRTC_VERSION
        ))
    })
}

/// The device address of a slice, as a kernel argument takes it.
pub(crate) fn device_address<T>(slice: &CudaSlice<T>) -> u64 {
    let (address, _no_event) = slice.device_ptr(slice.stream());
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver accepts PTX only up to its own CUDA version: the GPU machine's is 13.0, whose PTX
    /// ISA is 9.0, so an unpinned (newer) NVRTC would produce modules it cannot load.
    #[test]
    fn embedded_ptx_is_at_most_isa_9_0() {
        if NVRTC_VERSION.is_none() {
            eprintln!("skipped: built without NVRTC, no PTX embedded");
            return;
        }
        assert!(!KERNEL_MODULES.is_empty());
        for module in KERNEL_MODULES {
            let version = module
                .ptx
                .lines()
                .find_map(|line| line.trim().strip_prefix(".version "))
                .unwrap_or_else(|| panic!("{}: no .version line in its PTX", module.file));
            let (major, minor) = version.trim().split_once('.').expect("major.minor");
            let version = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap());
            assert!(
                version <= (9, 0),
                "{}: PTX ISA {version:?} is newer than 9.0",
                module.file
            );
            assert!(
                module.ptx.contains(".target sm_90"),
                "{}: not compiled for compute_90",
                module.file
            );
            for kernel in module.kernels {
                assert!(
                    module.ptx.contains(&format!(".entry {kernel}(")),
                    "{}: kernel {kernel} missing from the PTX",
                    module.file
                );
            }
            assert!(!module.cubin.is_empty(), "{}: no CUBIN", module.file);
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
        if NVRTC_VERSION.is_none() {
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
        if NVRTC_VERSION.is_none() {
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
        if NVRTC_VERSION.is_none() {
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
