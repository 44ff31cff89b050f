//! The device abstraction: where buffers live and which implementation runs an op.
//!
//! Every op checks its buffers' lengths against its shape first, and that they live where the
//! device can reach them, so a mistake in a layer is an error naming the op and the operand, never
//! a wrong answer or an out-of-bounds kernel.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use crate::cuda::{self, Gpu};
use crate::launch::gemm::{gemm_parts_len, GemmContext};
use crate::launch::{self, KernelArg, Launch};
use crate::{
    cpu, emulator, Activation, AdamHyper, Conv2dShape, Error, LinearShape, Pool2dShape, Precision,
    Result, XentShape, PAD_INDEX,
};

/// The element types a buffer can hold.
pub trait Element:
    bytemuck::Pod + DeviceRepr + ValidAsZeroBits + Default + Send + Sync + std::fmt::Debug + 'static
{
}
impl Element for f32 {}
impl Element for u32 {}
impl Element for u8 {}
impl Element for u64 {}

/// A flat array on some device.
#[derive(Debug)]
pub struct Buffer<T: Element> {
    storage: Storage<T>,
}

#[derive(Debug)]
enum Storage<T: Element> {
    /// Host memory, for the cpu and emulated devices.
    Host(Vec<T>),
    Cuda(CudaSlice<T>),
}

impl<T: Element> Buffer<T> {
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Host(v) => v.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn host(&self) -> Result<&[T]> {
        match &self.storage {
            Storage::Host(v) => Ok(v),
            Storage::Cuda(_) => Err(in_gpu_memory()),
        }
    }

    fn host_mut(&mut self) -> Result<&mut [T]> {
        match &mut self.storage {
            Storage::Host(v) => Ok(v),
            Storage::Cuda(_) => Err(in_gpu_memory()),
        }
    }

    /// This buffer as a kernel argument the kernel only reads: its first element's address.
    pub fn arg(&self) -> KernelArg {
        match &self.storage {
            Storage::Host(v) => KernelArg::Ptr(v.as_ptr() as u64),
            Storage::Cuda(s) => KernelArg::Ptr(cuda::device_address(s)),
        }
    }

    /// This buffer as a kernel argument the kernel writes.
    pub fn arg_mut(&mut self) -> KernelArg {
        match &mut self.storage {
            Storage::Host(v) => KernelArg::Ptr(v.as_mut_ptr() as u64),
            Storage::Cuda(s) => KernelArg::Ptr(cuda::device_address(s)),
        }
    }
}

fn in_host_memory() -> Error {
    Error::Device {
        device: "cuda".to_string(),
        what: "the buffer is in host memory; upload it first".to_string(),
    }
}

fn in_gpu_memory() -> Error {
    Error::Device {
        device: "cpu".to_string(),
        what: "the buffer is in GPU memory; download it first".to_string(),
    }
}

/// The emulated device splits sums as an H200 (132 SMs) would, so that it runs the same launches.
const EMULATED_SM_COUNT: usize = 132;

/// The emulated device's split-sum workspace: allocated at its largest on first use, then only
/// locked, one op at a time.
static EMULATED_GEMM_PARTS: Mutex<Vec<f32>> = Mutex::new(Vec::new());

/// Which implementation runs the ops.
#[derive(Clone, Debug)]
pub enum Device {
    /// Fast Rust ops ([`crate::cpu`]).
    Cpu,
    /// The CUDA kernels, run on the CPU by the emulator: slow, for testing the kernels anywhere.
    Emulated,
    /// The CUDA kernels on a GPU.
    Cuda(Arc<Gpu>),
}

impl PartialEq for Device {
    fn eq(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) | (Device::Emulated, Device::Emulated) => true,
            (Device::Cuda(a), Device::Cuda(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Device {}

impl Device {
    /// `cpu`, `cuda`, `emulated` or `auto` (cuda where a GPU and its driver are found, else cpu).
    pub fn from_name(name: &str) -> Result<Device> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "emulated" => Ok(Device::Emulated),
            "cuda" => Ok(Device::Cuda(Arc::new(Gpu::new()?))),
            // A GPU that is present but fails to open is an error, not a quiet fallback.
            "auto" if Gpu::is_available() => Device::from_name("cuda"),
            "auto" => Ok(Device::Cpu),
            other => Err(Error::Device {
                device: other.to_string(),
                what: "unknown device: expected cpu, cuda, emulated or auto".to_string(),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Emulated => "emulated",
            Device::Cuda(_) => "cuda",
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
            Device::Emulated | Device::Cuda(_) if bytes.is_multiple_of(4) => {
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
            Device::Cpu | Device::Emulated => {
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
            Device::Emulated => unsafe { emulator::run(launch) },
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
            Device::Emulated => {
                let mut parts = EMULATED_GEMM_PARTS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let parts_len = gemm_parts_len(EMULATED_SM_COUNT);
                if parts.len() < parts_len {
                    parts.resize(parts_len, 0.0);
                }
                let ctx = GemmContext {
                    sm_count: EMULATED_SM_COUNT,
                    parts: KernelArg::Ptr(parts.as_mut_ptr() as u64),
                    parts_len,
                };
                self.run(build(&ctx))
            }
            Device::Cuda(gpu) => {
                let parts = gpu.gemm_parts();
                let ctx = GemmContext {
                    sm_count: gpu.sm_count(),
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
            Device::Cpu | Device::Emulated => Ok(()),
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
            (Device::Cpu | Device::Emulated, Storage::Host(_)) => true,
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

    pub fn conv2d_forward(
        &self,
        s: &Conv2dShape,
        precision: Precision,
        x: &Buffer<f32>,
        w: &Buffer<f32>,
        b: &Buffer<f32>,
        y: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "conv2d_forward";
        s.check(op)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "weight", w, s.weight_len())?;
        self.expect(op, "bias", b, s.out_channels)?;
        self.expect(op, "y", y, s.output_len())?;
        match self {
            Device::Cpu => {
                cpu_precision(op, precision)?;
                cpu::conv2d_forward(s, x.host()?, w.host()?, b.host()?, y.host_mut()?)
            }
            Device::Emulated | Device::Cuda(_) => self.run(launch::conv2d::forward(
                s,
                precision,
                x.arg(),
                w.arg(),
                b.arg(),
                y.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn conv2d_backward_input(
        &self,
        s: &Conv2dShape,
        precision: Precision,
        w: &Buffer<f32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "conv2d_backward_input";
        s.check(op)?;
        self.expect(op, "weight", w, s.weight_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "dx", dx, s.input_len())?;
        match self {
            Device::Cpu => {
                cpu_precision(op, precision)?;
                cpu::conv2d_backward_input(s, w.host()?, dy.host()?, dx.host_mut()?)
            }
            Device::Emulated | Device::Cuda(_) => self.run(launch::conv2d::backward_input(
                s,
                precision,
                w.arg(),
                dy.arg(),
                dx.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn conv2d_backward_weight(
        &self,
        s: &Conv2dShape,
        precision: Precision,
        x: &Buffer<f32>,
        dy: &Buffer<f32>,
        dw: &mut Buffer<f32>,
        db: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "conv2d_backward_weight";
        s.check(op)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "dweight", dw, s.weight_len())?;
        self.expect(op, "dbias", db, s.out_channels)?;
        match self {
            Device::Cpu => {
                cpu_precision(op, precision)?;
                cpu::conv2d_backward_weight(
                    s,
                    x.host()?,
                    dy.host()?,
                    dw.host_mut()?,
                    db.host_mut()?,
                )
            }
            Device::Emulated | Device::Cuda(_) => {
                let (x, dy, dw, db) = (x.arg(), dy.arg(), dw.arg_mut(), db.arg_mut());
                self.run_gemm(|ctx| {
                    launch::conv2d::backward_weight(s, precision, ctx, x, dy, dw, db)
                })?
            }
        }
        Ok(())
    }

    /// dx = dy where the ReLU's output y > 0, else 0: the backward of a [`Device::linear_forward`]
    /// with [`Activation::Relu`] (whose forward is fused into the product; this pass is not).
    pub fn relu_backward(
        &self,
        y: &Buffer<f32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        self.expect("relu_backward", "y", y, y.len())?;
        self.expect("relu_backward", "dy", dy, y.len())?;
        self.expect("relu_backward", "dx", dx, y.len())?;
        match self {
            Device::Cpu => cpu::relu_backward(y.host()?, dy.host()?, dx.host_mut()?),
            Device::Emulated | Device::Cuda(_) => self.run(launch::relu::backward(
                y.len(),
                y.arg(),
                dy.arg(),
                dx.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// y = activation(x·Wᵀ + b).
    #[allow(clippy::too_many_arguments)] // the op's operands, each checked and named
    pub fn linear_forward(
        &self,
        s: &LinearShape,
        precision: Precision,
        activation: Activation,
        x: &Buffer<f32>,
        w: &Buffer<f32>,
        b: &Buffer<f32>,
        y: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "linear_forward";
        s.check(op)?;
        self.expect(op, "x", x, s.batch * s.in_features)?;
        self.expect(op, "weight", w, s.out_features * s.in_features)?;
        self.expect(op, "bias", b, s.out_features)?;
        self.expect(op, "y", y, s.batch * s.out_features)?;
        match self {
            Device::Cpu => {
                cpu_precision(op, precision)?;
                let y = y.host_mut()?;
                cpu::linear_forward(s, x.host()?, w.host()?, b.host()?, y);
                if activation == Activation::Relu {
                    y.iter_mut()
                        .for_each(|v| *v = if *v > 0.0 { *v } else { 0.0 });
                }
            }
            Device::Emulated | Device::Cuda(_) => {
                let (x, w, b, y) = (x.arg(), w.arg(), b.arg(), y.arg_mut());
                self.run_gemm(|ctx| {
                    launch::linear::forward(s, precision, activation, ctx, x, w, b, y)
                })?
            }
        }
        Ok(())
    }

    pub fn linear_backward_input(
        &self,
        s: &LinearShape,
        precision: Precision,
        w: &Buffer<f32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "linear_backward_input";
        s.check(op)?;
        self.expect(op, "weight", w, s.out_features * s.in_features)?;
        self.expect(op, "dy", dy, s.batch * s.out_features)?;
        self.expect(op, "dx", dx, s.batch * s.in_features)?;
        match self {
            Device::Cpu => {
                cpu_precision(op, precision)?;
                cpu::linear_backward_input(s, w.host()?, dy.host()?, dx.host_mut()?)
            }
            Device::Emulated | Device::Cuda(_) => {
                let (w, dy, dx) = (w.arg(), dy.arg(), dx.arg_mut());
                self.run_gemm(|ctx| launch::linear::backward_input(s, precision, ctx, w, dy, dx))?
            }
        }
        Ok(())
    }

    pub fn linear_backward_weight(
        &self,
        s: &LinearShape,
        precision: Precision,
        x: &Buffer<f32>,
        dy: &Buffer<f32>,
        dw: &mut Buffer<f32>,
        db: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "linear_backward_weight";
        s.check(op)?;
        self.expect(op, "x", x, s.batch * s.in_features)?;
        self.expect(op, "dy", dy, s.batch * s.out_features)?;
        self.expect(op, "dweight", dw, s.out_features * s.in_features)?;
        self.expect(op, "dbias", db, s.out_features)?;
        match self {
            Device::Cpu => {
                cpu_precision(op, precision)?;
                cpu::linear_backward_weight(
                    s,
                    x.host()?,
                    dy.host()?,
                    dw.host_mut()?,
                    db.host_mut()?,
                )
            }
            Device::Emulated | Device::Cuda(_) => {
                let (x, dy, dw, db) = (x.arg(), dy.arg(), dw.arg_mut(), db.arg_mut());
                self.run_gemm(|ctx| {
                    launch::linear::backward_weight(s, precision, ctx, x, dy, dw, db)
                })?
            }
        }
        Ok(())
    }

    /// Gathers and normalises `indices.len()` u8 images of `image_len` pixels each into `out`.
    pub fn gather_images(
        &self,
        images: &Buffer<u8>,
        image_len: usize,
        indices: &Buffer<u32>,
        out: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "gather_images";
        if image_len == 0 || !images.len().is_multiple_of(image_len) {
            return Err(Error::Shape {
                op,
                what: format!(
                    "images has {} bytes, not a multiple of image_len {image_len}",
                    images.len()
                ),
            });
        }
        let image_count = images.len() / image_len;
        self.expect(op, "images", images, images.len())?;
        self.expect(op, "indices", indices, indices.len())?;
        self.expect(op, "out", out, indices.len() * image_len)?;
        match self {
            Device::Cpu => {
                let indices = indices.host()?;
                check_indices(op, indices, image_count)?;
                cpu::gather_images(images.host()?, image_len, indices, out.host_mut()?)
            }
            Device::Emulated | Device::Cuda(_) => self.run(launch::data::gather_images(
                u32_len(op, "image_len", image_len)?,
                u32_len(op, "images", image_count)?,
                u32_len(op, "out", out.len())? / image_len as u32,
                images.arg(),
                indices.arg(),
                out.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// out[i] = labels[indices[i]].
    pub fn gather_labels(
        &self,
        labels: &Buffer<u8>,
        indices: &Buffer<u32>,
        out: &mut Buffer<u32>,
    ) -> Result<()> {
        let op = "gather_labels";
        self.expect(op, "labels", labels, labels.len())?;
        self.expect(op, "indices", indices, indices.len())?;
        self.expect(op, "out", out, indices.len())?;
        match self {
            Device::Cpu => {
                let indices = indices.host()?;
                check_indices(op, indices, labels.len())?;
                cpu::gather_labels(labels.host()?, indices, out.host_mut()?)
            }
            Device::Emulated | Device::Cuda(_) => self.run(launch::data::gather_labels(
                u32_len(op, "labels", labels.len())?,
                u32_len(op, "out", out.len())?,
                labels.arg(),
                indices.arg(),
                out.arg_mut(),
            ))?,
        }
        Ok(())
    }
}

/// The cpu device multiplies in fp32 only: a request for TF32 is a mistake to report, not to
/// quietly compute more exactly.
fn cpu_precision(op: &'static str, precision: Precision) -> Result<()> {
    match precision {
        Precision::Fp32 => Ok(()),
        Precision::Tf32 => Err(Error::Device {
            device: "cpu".to_string(),
            what: format!("{op}: the cpu device computes in fp32 only (asked for {precision})"),
        }),
    }
}

/// On the host an index past the data would panic; the kernels write NaN (or !0 for labels).
/// [`PAD_INDEX`] is a padding row, which both give zeros (or [`crate::IGNORE_LABEL`]).
fn check_indices(op: &'static str, indices: &[u32], count: usize) -> Result<()> {
    match indices
        .iter()
        .find(|&&i| i != PAD_INDEX && i as usize >= count)
    {
        Some(bad) => Err(Error::Shape {
            op,
            what: format!("index {bad} is past the {count} items"),
        }),
        None => Ok(()),
    }
}

/// On the host a label past the classes would index out of bounds; the kernels give a NaN loss,
/// which the trainer stops on.
fn check_labels<'a>(
    op: &'static str,
    mut labels: impl Iterator<Item = &'a u32>,
    classes: usize,
) -> Result<()> {
    match labels.find(|&&l| l as usize >= classes) {
        Some(bad) => Err(Error::Shape {
            op,
            what: format!("label {bad}, expected 0 to {}", classes - 1),
        }),
        None => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fc() -> LinearShape {
        LinearShape {
            batch: 2,
            in_features: 3,
            out_features: 2,
        }
    }

    #[test]
    fn the_cpu_device_refuses_tf32_by_name() {
        let dev = Device::Cpu;
        let s = fc();
        let (x, w, b) = (
            dev.upload(&[1.0; 6]).unwrap(),
            dev.upload(&[1.0; 6]).unwrap(),
            dev.upload(&[0.0; 2]).unwrap(),
        );
        let mut y = dev.zeros(4).unwrap();
        let error = dev
            .linear_forward(&s, Precision::Tf32, Activation::None, &x, &w, &b, &mut y)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("linear_forward") && error.contains("fp32 only"),
            "{error}"
        );
    }

    #[test]
    fn the_cpu_device_applies_relu_after_the_product() {
        let dev = Device::Cpu;
        let s = fc();
        // y = x·Wᵀ + b: rows of x are (1, 2, 3) and (-1, -2, -3); W's rows (1, 1, 1), (1, 0, 0).
        let x = dev.upload(&[1.0, 2.0, 3.0, -1.0, -2.0, -3.0]).unwrap();
        let w = dev.upload(&[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]).unwrap();
        let b = dev.upload(&[0.5, -2.0]).unwrap();
        let mut y = dev.zeros(4).unwrap();
        for (activation, want) in [
            (Activation::None, [6.5, -1.0, -5.5, -3.0]),
            (Activation::Relu, [6.5, 0.0, 0.0, 0.0]),
        ] {
            dev.linear_forward(&s, Precision::Fp32, activation, &x, &w, &b, &mut y)
                .unwrap();
            assert_eq!(dev.download(&y).unwrap(), want, "{activation:?}");
        }
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

/// The parameter and gradient tensors of one multi-tensor Adam launch, as the kernel reads them:
/// their device addresses and where each tensor's moments start in the flat moment buffers.
/// Made once by [`Device::tensor_table`]; [`Device::adam_update_tensors`] checks that the tensors
/// it is handed are still the ones at those addresses.
#[derive(Debug)]
pub struct TensorTable {
    /// (parameter address, gradient address, length) of each tensor, as the host knows them.
    tensors: Vec<(u64, u64, usize)>,
    params: Buffer<u64>,
    grads: Buffer<u64>,
    /// offsets[t] = the elements of tensors before t; offsets[tensors] = all of them.
    offsets: Buffer<u32>,
}

impl TensorTable {
    /// Parameters over all tensors: the length of the flat moment buffers.
    pub fn total_len(&self) -> usize {
        self.tensors.iter().map(|&(_, _, len)| len).sum()
    }

    /// Each tensor's length, in order.
    pub fn lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.tensors.iter().map(|&(_, _, len)| len)
    }
}

fn address<T: Element>(buf: &Buffer<T>) -> u64 {
    match buf.arg() {
        KernelArg::Ptr(address) => address,
        _ => unreachable!("a buffer's argument is its address"),
    }
}

impl Device {
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
            Device::Emulated => {
                if !emulator::graph::begin_capture() {
                    return Err(E::from(capture_error("emulated")));
                }
                let result = record();
                let launches = emulator::graph::end_capture();
                result?;
                Recorded::Launches(launches)
            }
            Device::Cuda(gpu) => {
                gpu.begin_capture()?;
                let result = record();
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
            (Recorded::Launches(launches), _) => {
                // The recorded GEMM launches address the shared split-sum workspace: hold it, as
                // run_gemm does, so that another thread's op cannot use it meanwhile.
                let _parts = EMULATED_GEMM_PARTS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for launch in launches {
                    // SAFETY: passed on from the caller.
                    unsafe { emulator::run(launch)? };
                }
                Ok(())
            }
            (Recorded::Cuda(_), _) => unreachable!("a CUDA graph belongs to a cuda device"),
        }
    }

    /// Fails if a capture is under way: `op` would escape it (it is not a launch).
    fn outside_capture(&self, op: &'static str) -> Result<()> {
        let capturing = match self {
            Device::Cpu => false,
            Device::Emulated => emulator::graph::is_capturing(),
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

    /// y = relu(maxpool2d(x)) and the pool's argmax, in one pass (ReLU is monotone, so it
    /// commutes with the max: this is also maxpool of relu).
    pub fn maxpool2d_relu_forward(
        &self,
        s: &Pool2dShape,
        x: &Buffer<f32>,
        y: &mut Buffer<f32>,
        argmax: &mut Buffer<u32>,
    ) -> Result<()> {
        let op = "maxpool2d_relu_forward";
        s.check(op)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "y", y, s.output_len())?;
        self.expect(op, "argmax", argmax, s.output_len())?;
        match self {
            Device::Cpu => {
                cpu::maxpool2d_relu_forward(s, x.host()?, y.host_mut()?, argmax.host_mut()?)
            }
            Device::Emulated | Device::Cuda(_) => self.run(launch::maxpool::relu_forward(
                s,
                x.arg(),
                y.arg_mut(),
                argmax.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// The gradient of [`Device::maxpool2d_relu_forward`]: dy goes to each window's argmax where
    /// the output y is positive; every other dx is 0.
    pub fn maxpool2d_relu_backward(
        &self,
        s: &Pool2dShape,
        argmax: &Buffer<u32>,
        y: &Buffer<f32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "maxpool2d_relu_backward";
        s.check(op)?;
        self.expect(op, "argmax", argmax, s.output_len())?;
        self.expect(op, "y", y, s.output_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "dx", dx, s.input_len())?;
        match self {
            Device::Cpu => cpu::maxpool2d_relu_backward(
                s,
                argmax.host()?,
                y.host()?,
                dy.host()?,
                dx.host_mut()?,
            ),
            Device::Emulated | Device::Cuda(_) => self.run(launch::maxpool::relu_backward(
                s,
                argmax.arg(),
                y.arg(),
                dy.arg(),
                dx.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// The loss forward and backward in one op, over the rows whose label is not
    /// [`IGNORE_LABEL`](crate::IGNORE_LABEL) (padding): adds their loss sum to `totals[0]` and
    /// their correct count to `totals[1]`, and writes dlogits = (softmax − onehot) / rows for
    /// them (rows: how many there are), 0 for padding rows.
    pub fn softmax_xent_fused(
        &self,
        s: &XentShape,
        logits: &Buffer<f32>,
        labels: &Buffer<u32>,
        totals: &mut Buffer<f32>,
        dlogits: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "softmax_xent_fused";
        s.check(op)?;
        self.expect(op, "logits", logits, s.batch * s.classes)?;
        self.expect(op, "labels", labels, s.batch)?;
        self.expect(op, "totals", totals, 2)?;
        self.expect(op, "dlogits", dlogits, s.batch * s.classes)?;
        match self {
            Device::Cpu => {
                let real = labels.host()?.iter().filter(|&&l| l != crate::IGNORE_LABEL);
                check_labels(op, real, s.classes)?;
                cpu::softmax_xent_fused(
                    s,
                    logits.host()?,
                    labels.host()?,
                    totals.host_mut()?,
                    dlogits.host_mut()?,
                )
            }
            Device::Emulated | Device::Cuda(_) => self.run(launch::softmax_xent::fused(
                s,
                logits.arg(),
                labels.arg(),
                totals.arg_mut(),
                dlogits.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// The table of `params` and their `grads` (pairwise the same lengths) for
    /// [`Device::adam_update_tensors`].
    pub fn tensor_table(
        &self,
        params: &[&Buffer<f32>],
        grads: &[&Buffer<f32>],
    ) -> Result<TensorTable> {
        let op = "tensor_table";
        check(op, "grads", grads.len(), params.len())?;
        let mut tensors = Vec::with_capacity(params.len());
        let mut offsets = vec![0u32];
        for (t, (param, grad)) in params.iter().zip(grads).enumerate() {
            self.expect(op, &format!("params[{t}]"), param, param.len())?;
            self.expect(op, &format!("grads[{t}]"), grad, param.len())?;
            tensors.push((address(param), address(grad), param.len()));
            let end = *offsets.last().unwrap_or(&0) as usize + param.len();
            offsets.push(u32_len(op, "the tensors together", end)?);
        }
        let (param_addresses, grad_addresses): (Vec<u64>, Vec<u64>) =
            tensors.iter().map(|&(p, g, _)| (p, g)).unzip();
        Ok(TensorTable {
            params: self.upload(&param_addresses)?,
            grads: self.upload(&grad_addresses)?,
            offsets: self.upload(&offsets)?,
            tensors,
        })
    }

    /// One Adam step over many tensors in one launch: tensor t of `params` (updated from
    /// `grads[t]`) has its moments in `m` and `v` at the offset of the tensors before it.
    /// `scalars` holds the step's [`AdamStep::scalars`](crate::AdamStep::scalars), read from
    /// device memory so that a captured step replays with each step's own values. `table` must
    /// come from [`Device::tensor_table`] of these same buffers.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_update_tensors(
        &self,
        hyper: &AdamHyper,
        scalars: &Buffer<f32>,
        table: &TensorTable,
        params: &mut [&mut Buffer<f32>],
        grads: &[&Buffer<f32>],
        m: &mut Buffer<f32>,
        v: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "adam_update_tensors";
        check(op, "params", params.len(), table.tensors.len())?;
        check(op, "grads", grads.len(), table.tensors.len())?;
        for (t, ((param, grad), &(p, g, len))) in
            params.iter().zip(grads).zip(&table.tensors).enumerate()
        {
            self.expect(op, &format!("params[{t}]"), param, len)?;
            self.expect(op, &format!("grads[{t}]"), grad, len)?;
            if address(param) != p || address(grad) != g {
                return Err(Error::Shape {
                    op,
                    what: format!("tensor {t} is not the one its table was made for"),
                });
            }
        }
        let total = table.total_len();
        self.expect(op, "m", m, total)?;
        self.expect(op, "v", v, total)?;
        self.expect(op, "scalars", scalars, 2)?;
        match self {
            Device::Cpu => {
                let (m, v) = (m.host_mut()?, v.host_mut()?);
                let scalars = scalars.host()?;
                let mut start = 0;
                for (param, grad) in params.iter_mut().zip(grads) {
                    let range = start..start + param.len();
                    start = range.end;
                    cpu::adam_update_scaled(
                        hyper,
                        [scalars[0], scalars[1]],
                        param.host_mut()?,
                        grad.host()?,
                        &mut m[range.clone()],
                        &mut v[range],
                    );
                }
            }
            Device::Emulated | Device::Cuda(_) => self.run(launch::adam::update_tensors(
                hyper,
                total,
                table.tensors.len(),
                table.params.arg(),
                table.grads.arg(),
                table.offsets.arg(),
                m.arg_mut(),
                v.arg_mut(),
                scalars.arg(),
            ))?,
        }
        Ok(())
    }
}

fn capture_error(device: &str) -> Error {
    Error::Device {
        device: device.to_string(),
        what: "a graph capture is already under way".to_string(),
    }
}
