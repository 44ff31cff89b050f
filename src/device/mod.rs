//! The device abstraction: where buffers live and which implementation runs an op.
//!
//! - `buffer.rs`: [`Buffer`], a flat array in host or GPU memory.
//! - here: [`Device`] itself: opening one, its memory (allocate, upload, write, download, copy,
//!   fill), running kernel launches, and capturing them into a [`Graph`] to replay.
//! - `ops.rs`: the ops of the network, each dispatched to the cpu ops or to launches.
//!
//! Every op checks its buffers' lengths against its shape first, and that they live where the
//! device can reach them, so a mistake in a layer is an error naming the op and the operand, never
//! a wrong answer or an out-of-bounds kernel.

mod buffer;
mod ops;

use std::sync::{Arc, Mutex};

pub use buffer::{Buffer, Element};
pub use ops::TensorTable;

use crate::cpu::gemm::Kernel;
use crate::cuda::{self, Gpu};
use crate::gpu_arch::ComputeCapability;
use crate::launch::gemm::{gemm_parts_len, GemmContext};
use crate::launch::{self, KernelArg, Launch};
use crate::{emulator, Error, Precision, Result};
use buffer::{in_host_memory, Storage};

/// The emulated device splits sums as an H200 (132 SMs) would, so that it runs the same launches.
const EMULATED_SM_COUNT: usize = 132;

/// The emulated device's split-sum workspace: allocated at its largest on first use, then only
/// locked, one op at a time.
static EMULATED_GEMM_PARTS: Mutex<Vec<f32>> = Mutex::new(Vec::new());

/// The variable that sets the compute capability the emulated device plays (`7.5`, `9.0`, ...).
pub const EMULATED_CC_VARIABLE: &str = "HANDWRITTEN_EMULATED_CC";

/// Which implementation runs the ops.
#[derive(Clone, Debug)]
pub enum Device {
    /// Fast Rust ops ([`crate::cpu`]).
    Cpu,
    /// The CUDA kernels, run on the CPU by the emulator as a GPU of this compute capability would
    /// run them (its build of the kernels, its limits): slow, for testing the kernels anywhere.
    Emulated(ComputeCapability),
    /// The CUDA kernels on a GPU.
    Cuda(Arc<Gpu>),
}

impl PartialEq for Device {
    fn eq(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Emulated(a), Device::Emulated(b)) => a == b,
            (Device::Cuda(a), Device::Cuda(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Device {}

impl Device {
    /// `cpu` (on the instruction set `HANDWRITTEN_CPU_ISA` names, the fastest by default),
    /// `cuda`, `emulated` (as a GPU of the capability `HANDWRITTEN_EMULATED_CC` names, 9.0 by
    /// default) or `auto` (see [`Device::auto`]).
    pub fn from_name(name: &str) -> Result<Device> {
        match name {
            "cpu" => cpu_device(),
            "emulated" => Ok(Device::Emulated(emulated_capability()?)),
            "cuda" => Ok(Device::Cuda(Arc::new(Gpu::new()?))),
            "auto" => match Device::auto().0 {
                Device::Cpu => cpu_device(),
                device => Ok(device),
            },
            other => Err(Error::Device {
                device: other.to_string(),
                what: "unknown device: expected cpu, cuda, emulated or auto".to_string(),
            }),
        }
    }

    /// The GPU where one is found and the binary runs on it, else the cpu device, with a line
    /// that says which GPU was found and why it is not used.
    pub fn auto() -> (Device, Option<String>) {
        if !Gpu::is_available() {
            return (Device::Cpu, None);
        }
        match Gpu::new() {
            Ok(gpu) => (Device::Cuda(Arc::new(gpu)), None),
            Err(e) => (
                Device::Cpu,
                Some(format!(
                    "not training on the GPU ({e}): using the cpu device"
                )),
            ),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Emulated(_) => "emulated",
            Device::Cuda(_) => "cuda",
        }
    }

    /// The device's name with the instruction set or GPU it runs on, for the first line of a
    /// run: `cpu (avx2)`, `cuda (NVIDIA H200, compute capability 9.0)`, `emulated (compute
    /// capability 7.5)`.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => format!("cpu ({})", Kernel::detect().name()),
            Device::Emulated(cc) => format!("emulated (compute capability {cc})"),
            Device::Cuda(gpu) => format!(
                "cuda ({}, compute capability {})",
                gpu.name(),
                gpu.capability()
            ),
        }
    }

    /// The compute capability of the GPU that runs the kernels, real or emulated.
    pub fn capability(&self) -> Option<ComputeCapability> {
        match self {
            Device::Cpu => None,
            Device::Emulated(cc) => Some(*cc),
            Device::Cuda(gpu) => Some(gpu.capability()),
        }
    }

    /// The precision the device multiplies in unless told otherwise: TF32 on GPUs with TF32
    /// tensor cores (8.0 on), fp32 elsewhere.
    pub fn default_precision(&self) -> Precision {
        self.capability()
            .map_or(Precision::Fp32, ComputeCapability::default_precision)
    }

    /// Whether the device can multiply in `precision`; the error says why not.
    pub fn check_precision(&self, precision: Precision) -> std::result::Result<(), String> {
        match (self.capability(), precision) {
            (_, Precision::Fp32) => Ok(()),
            (None, Precision::Tf32) => Err(format!(
                "the {} device computes in fp32 only",
                self.name()
            )),
            (Some(cc), Precision::Tf32) if !cc.has_tf32() => Err(format!(
                "TF32 needs the tensor cores of compute capability {} or newer; this {} GPU is {cc}",
                ComputeCapability::AMPERE,
                self.name()
            )),
            (Some(_), Precision::Tf32) => Ok(()),
        }
    }

    pub fn zeros<T: Element>(&self, len: usize) -> Result<Buffer<T>> {
        self.outside_capture("zeros")?;
        let storage = match self {
            Device::Cuda(gpu) if len > 0 => Storage::Cuda(gpu.zeros(len)?),
            // CUDA allocates no 0 bytes; an empty buffer is the same anywhere.
            _ => Storage::Host(vec![T::default(); len]),
        };
        Ok(Buffer { storage })
    }

    pub fn upload<T: Element>(&self, data: &[T]) -> Result<Buffer<T>> {
        self.outside_capture("upload")?;
        let storage = match self {
            Device::Cuda(gpu) if !data.is_empty() => Storage::Cuda(gpu.upload(data)?),
            _ => Storage::Host(data.to_vec()),
        };
        Ok(Buffer { storage })
    }

    /// Copies host data into an existing buffer of the same length.
    pub fn write<T: Element>(&self, data: &[T], dst: &mut Buffer<T>) -> Result<()> {
        self.expect("write", "dst", dst, data.len())?;
        self.outside_capture("write")?;
        match (self, &mut dst.storage) {
            (Device::Cuda(gpu), Storage::Cuda(slice)) => gpu.write(data, slice),
            _ => {
                dst.host_mut()?.copy_from_slice(data);
                Ok(())
            }
        }
    }

    pub fn download<T: Element>(&self, buf: &Buffer<T>) -> Result<Vec<T>> {
        self.expect("download", "buffer", buf, buf.len())?;
        self.outside_capture("download")?;
        match (self, &buf.storage) {
            (Device::Cuda(gpu), Storage::Cuda(slice)) => gpu.download(slice),
            _ => Ok(buf.host()?.to_vec()),
        }
    }

    pub fn fill_zero<T: Element>(&self, buf: &mut Buffer<T>) -> Result<()> {
        self.expect("fill_zero", "buffer", buf, buf.len())?;
        let bytes = buf.len() * size_of::<T>();
        match self {
            _ if bytes == 0 => Ok(()),
            Device::Emulated(_) | Device::Cuda(_) if bytes.is_multiple_of(4) => {
                let words = u32_len("fill_zero", "buffer", bytes / 4)?;
                self.run(launch::data::fill_zero(words, buf.arg_mut()))
            }
            // The kernel clears whole words; other byte counts (only u8 buffers) are cleared by
            // the copy engine or on the host.
            Device::Cuda(gpu) => match &mut buf.storage {
                Storage::Cuda(slice) => {
                    self.outside_capture("fill_zero of a u8 buffer")?;
                    gpu.memset_zero(slice)
                }
                Storage::Host(_) => Err(in_host_memory()),
            },
            Device::Cpu | Device::Emulated(_) => {
                self.outside_capture("fill_zero of a u8 buffer")?;
                buf.host_mut()?.fill(T::default());
                Ok(())
            }
        }
    }

    /// Copies a buffer into another of the same length on this device, without a host round trip.
    pub fn copy<T: Element>(&self, src: &Buffer<T>, dst: &mut Buffer<T>) -> Result<()> {
        self.expect("copy", "src", src, src.len())?;
        self.expect("copy", "dst", dst, src.len())?;
        self.outside_capture("copy")?;
        match (self, &src.storage, &mut dst.storage) {
            (Device::Cuda(gpu), Storage::Cuda(from), Storage::Cuda(to)) => gpu.copy(from, to),
            _ => {
                dst.host_mut()?.copy_from_slice(src.host()?);
                Ok(())
            }
        }
    }

    /// Runs one launch of a kernel from `kernels/*.cu` on this device's executor (the cpu device
    /// runs none). On the GPU it runs asynchronously: errors in the kernel itself surface at the
    /// next [`Device::synchronize`] or download.
    ///
    /// # Safety
    /// Every pointer argument must come from [`Buffer::arg`] or [`Buffer::arg_mut`] of a buffer
    /// on this device that holds everything the kernel reads or writes through it, and buffers
    /// the kernel writes must be passed with `arg_mut`.
    pub unsafe fn launch(&self, launch: &Launch) -> Result<()> {
        match self {
            Device::Cpu => Err(Error::Launch {
                kernel: launch.kernel.to_string(),
                what: "the cpu device runs no CUDA kernels".to_string(),
            }),
            // SAFETY: passed on from the caller.
            Device::Emulated(cc) => unsafe { emulator::run(launch, *cc) },
            Device::Cuda(gpu) => unsafe { gpu.launch(launch) },
        }
    }

    /// Runs an op's launches in order.
    fn run(&self, launches: Vec<Launch>) -> Result<()> {
        for launch in &launches {
            // SAFETY: the launch builders take their pointers from the op's buffers, which the op
            // has checked against its shape and this device.
            unsafe { self.launch(launch)? };
        }
        Ok(())
    }

    /// Runs the launches of a GEMM op, built with this device's SM count and split-sum workspace,
    /// which stays locked until they are issued: on the GPU they then run in stream order before
    /// any other op's, on the emulator they have finished.
    fn run_gemm(&self, build: impl FnOnce(&GemmContext) -> Vec<Launch>) -> Result<()> {
        match self {
            Device::Cpu => Err(Error::Device {
                device: "cpu".to_string(),
                what: "the cpu device runs no CUDA kernels".to_string(),
            }),
            Device::Emulated(cc) => {
                let mut parts = EMULATED_GEMM_PARTS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let parts_len = gemm_parts_len(EMULATED_SM_COUNT);
                if parts.len() < parts_len {
                    parts.resize(parts_len, 0.0);
                }
                let ctx = GemmContext {
                    sm_count: EMULATED_SM_COUNT,
                    capability: *cc,
                    parts: KernelArg::Ptr(parts.as_mut_ptr() as u64),
                    parts_len,
                };
                self.run(build(&ctx))
            }
            Device::Cuda(gpu) => {
                let parts = gpu.gemm_parts();
                let ctx = GemmContext {
                    sm_count: gpu.sm_count(),
                    capability: gpu.capability(),
                    parts: KernelArg::Ptr(cuda::device_address(&parts)),
                    parts_len: parts.len(),
                };
                self.run(build(&ctx))
            }
        }
    }

    /// Waits until every op issued so far has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.outside_capture("synchronize")?;
        match self {
            Device::Cpu | Device::Emulated(_) => Ok(()),
            Device::Cuda(gpu) => gpu.synchronize(),
        }
    }

    /// Checks that `buf` has `len` elements and lives where this device can use it.
    fn expect<T: Element>(
        &self,
        op: &'static str,
        operand: &str,
        buf: &Buffer<T>,
        len: usize,
    ) -> Result<()> {
        let reachable = match (self, &buf.storage) {
            _ if buf.is_empty() => true,
            (Device::Cpu | Device::Emulated(_), Storage::Host(_)) => true,
            (Device::Cuda(gpu), Storage::Cuda(slice)) => gpu.owns(slice),
            _ => false,
        };
        if !reachable {
            return Err(Error::Shape {
                op,
                what: format!("{operand} lives on another device than {}", self.name()),
            });
        }
        check(op, operand, buf.len(), len)
    }

    /// Records the launches `record` issues into a [`Graph`] instead of running them (so nothing
    /// `record` launches has happened when this returns: replay the graph for that). Only
    /// launches may be recorded: allocating, copying to or from the host and waiting fail while a
    /// capture is under way, so run a step eagerly once first to allocate its buffers.
    pub fn capture<E: From<Error>>(
        &self,
        record: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<Graph, E> {
        let recorded = match self {
            Device::Cpu => {
                return Err(E::from(Error::Device {
                    device: "cpu".to_string(),
                    what: "the cpu device runs no kernels to capture into a graph".to_string(),
                }))
            }
            Device::Emulated(_) => {
                if !emulator::graph::begin_capture() {
                    return Err(E::from(Error::Device {
                        device: "emulated".to_string(),
                        what: "a graph capture is already under way".to_string(),
                    }));
                }
                let open = OpenCapture(self);
                let result = record();
                std::mem::forget(open);
                let launches = emulator::graph::end_capture();
                result?;
                Recorded::Launches(launches)
            }
            Device::Cuda(gpu) => {
                gpu.begin_capture()?;
                let open = OpenCapture(self);
                let result = record();
                std::mem::forget(open);
                let graph = gpu.end_capture();
                result?;
                Recorded::Cuda(graph?)
            }
        };
        Ok(Graph {
            device: self.clone(),
            recorded,
        })
    }

    /// Replays a graph captured on this device: every recorded launch, in order, with the
    /// arguments it was recorded with.
    ///
    /// # Safety
    /// Every buffer the recorded launches address must still be alive, and not reallocated since
    /// the capture (the launches keep their addresses).
    pub unsafe fn launch_graph(&self, graph: &Graph) -> Result<()> {
        if graph.device != *self {
            return Err(Error::Device {
                device: self.name().to_string(),
                what: format!(
                    "the graph was captured on another device ({})",
                    graph.device.name()
                ),
            });
        }
        match (&graph.recorded, self) {
            (Recorded::Cuda(graph), Device::Cuda(gpu)) => gpu.launch_graph(graph),
            (Recorded::Launches(launches), Device::Emulated(cc)) => {
                // The recorded GEMM launches address the shared split-sum workspace: hold it, as
                // run_gemm does, so that another thread's op cannot use it meanwhile.
                let _parts = EMULATED_GEMM_PARTS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for launch in launches {
                    // SAFETY: passed on from the caller.
                    unsafe { emulator::run(launch, *cc)? };
                }
                Ok(())
            }
            _ => unreachable!("a graph belongs to the device that captured it"),
        }
    }

    /// Fails if a capture is under way: `op` would escape it (it is not a launch).
    fn outside_capture(&self, op: &'static str) -> Result<()> {
        let capturing = match self {
            Device::Cpu => false,
            Device::Emulated(_) => emulator::graph::is_capturing(),
            Device::Cuda(gpu) => gpu.is_capturing(),
        };
        if capturing {
            return Err(Error::Device {
                device: self.name().to_string(),
                what: format!(
                    "{op} is not a kernel launch, so it cannot be part of a graph capture"
                ),
            });
        }
        Ok(())
    }
}

/// A capture under way, ended if `record` unwinds (a panic in a layer), so that the stream is not
/// left capturing and every later op refused. The normal path forgets it and ends the capture
/// itself.
struct OpenCapture<'a>(&'a Device);

impl Drop for OpenCapture<'_> {
    fn drop(&mut self) {
        match self.0 {
            Device::Emulated(_) => drop(emulator::graph::end_capture()),
            Device::Cuda(gpu) => drop(gpu.end_capture()),
            Device::Cpu => {}
        }
    }
}

/// The compute capability `HANDWRITTEN_EMULATED_CC` names, or 9.0.
/// The cpu device, where `HANDWRITTEN_CPU_ISA` is unset or names an instruction set this CPU
/// runs.
fn cpu_device() -> Result<Device> {
    match Kernel::from_env() {
        Ok(_) => Ok(Device::Cpu),
        Err(what) => Err(Error::Device {
            device: "cpu".to_string(),
            what,
        }),
    }
}

fn emulated_capability() -> Result<ComputeCapability> {
    let Some(value) = std::env::var_os(EMULATED_CC_VARIABLE) else {
        return Ok(ComputeCapability::EMULATED_DEFAULT);
    };
    let text = value.to_string_lossy();
    let refuse = |what: String| Error::Device {
        device: "emulated".to_string(),
        what: format!("{EMULATED_CC_VARIABLE}={text}: {what}"),
    };
    let cc = ComputeCapability::parse(&text).ok_or_else(|| {
        refuse("expected a compute capability such as 7.5, 8.6 or 9.0".to_string())
    })?;
    match cc.unsupported() {
        Some(why) => Err(refuse(why)),
        None => Ok(cc),
    }
}

/// Kernels index with 32-bit unsigned ints.
fn u32_len(op: &'static str, operand: &str, len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::Shape {
        op,
        what: format!("{operand} has {len} elements, more than the kernels' 32-bit indices reach"),
    })
}

fn check(op: &'static str, operand: &str, len: usize, expected: usize) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(Error::Shape {
            op,
            what: format!("{operand} has {len} elements, expected {expected}"),
        })
    }
}

/// A recorded training step (or any sequence of launches), replayed with one call: a CUDA graph
/// on the GPU, the list of launches on the emulator. Made by [`Device::capture`].
pub struct Graph {
    device: Device,
    recorded: Recorded,
}

enum Recorded {
    Launches(Vec<Launch>),
    Cuda(cudarc::driver::CudaGraph),
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.recorded {
            Recorded::Launches(launches) => write!(f, "Graph({} launches)", launches.len()),
            Recorded::Cuda(_) => write!(f, "Graph(cuda)"),
        }
    }
}

impl Graph {
    /// The recorded launches, in order, on the emulator (a CUDA graph keeps them on the GPU).
    pub fn launches(&self) -> Option<&[Launch]> {
        match &self.recorded {
            Recorded::Launches(launches) => Some(launches),
            Recorded::Cuda(_) => None,
        }
    }
}
