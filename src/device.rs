//! The device abstraction: where buffers live and which implementation runs an op.
//!
//! Every op checks its buffers' lengths against its shape first, and that they live where the
//! device can reach them, so a mistake in a layer is an error naming the op and the operand, never
//! a wrong answer or an out-of-bounds kernel.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use crate::cuda::{self, Gpu};
use crate::launch::{KernelArg, Launch};
use crate::{
    cpu, data_launches, emulator, launches, AdamStep, Conv2dShape, Error, LinearShape, Pool2dShape,
    Result, XentShape,
};

/// The element types a buffer can hold.
pub trait Element:
    bytemuck::Pod + DeviceRepr + ValidAsZeroBits + Default + Send + Sync + std::fmt::Debug + 'static
{
}
impl Element for f32 {}
impl Element for u32 {}
impl Element for u8 {}

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
        let storage = match self {
            Device::Cuda(gpu) if len > 0 => Storage::Cuda(gpu.zeros(len)?),
            // CUDA allocates no 0 bytes; an empty buffer is the same anywhere.
            _ => Storage::Host(vec![T::default(); len]),
        };
        Ok(Buffer { storage })
    }

    pub fn upload<T: Element>(&self, data: &[T]) -> Result<Buffer<T>> {
        let storage = match self {
            Device::Cuda(gpu) if !data.is_empty() => Storage::Cuda(gpu.upload(data)?),
            _ => Storage::Host(data.to_vec()),
        };
        Ok(Buffer { storage })
    }

    /// Copies host data into an existing buffer of the same length.
    pub fn write<T: Element>(&self, data: &[T], dst: &mut Buffer<T>) -> Result<()> {
        self.expect("write", "dst", dst, data.len())?;
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
                self.run(data_launches::fill_zero(words, buf.arg_mut()))
            }
            // The kernel clears whole words; other byte counts (only u8 buffers) are cleared by
            // the copy engine or on the host.
            Device::Cuda(gpu) => match &mut buf.storage {
                Storage::Cuda(slice) => gpu.memset_zero(slice),
                Storage::Host(_) => Err(in_host_memory()),
            },
            Device::Cpu | Device::Emulated => {
                buf.host_mut()?.fill(T::default());
                Ok(())
            }
        }
    }

    /// Copies a buffer into another of the same length on this device, without a host round trip.
    pub fn copy<T: Element>(&self, src: &Buffer<T>, dst: &mut Buffer<T>) -> Result<()> {
        self.expect("copy", "src", src, src.len())?;
        self.expect("copy", "dst", dst, src.len())?;
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

    /// Waits until every op issued so far has finished.
    pub fn synchronize(&self) -> Result<()> {
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
            Device::Cpu => cpu::conv2d_forward(s, x.host()?, w.host()?, b.host()?, y.host_mut()?),
            Device::Emulated | Device::Cuda(_) => self.run(launches::conv2d_forward(
                s,
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
            Device::Cpu => cpu::conv2d_backward_input(s, w.host()?, dy.host()?, dx.host_mut()?),
            Device::Emulated | Device::Cuda(_) => self.run(launches::conv2d_backward_input(
                s,
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
            Device::Cpu => cpu::conv2d_backward_weight(
                s,
                x.host()?,
                dy.host()?,
                dw.host_mut()?,
                db.host_mut()?,
            ),
            Device::Emulated | Device::Cuda(_) => self.run(launches::conv2d_backward_weight(
                s,
                x.arg(),
                dy.arg(),
                dw.arg_mut(),
                db.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn maxpool2d_forward(
        &self,
        s: &Pool2dShape,
        x: &Buffer<f32>,
        y: &mut Buffer<f32>,
        argmax: &mut Buffer<u32>,
    ) -> Result<()> {
        let op = "maxpool2d_forward";
        s.check(op)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "y", y, s.output_len())?;
        self.expect(op, "argmax", argmax, s.output_len())?;
        match self {
            Device::Cpu => cpu::maxpool2d_forward(s, x.host()?, y.host_mut()?, argmax.host_mut()?),
            Device::Emulated | Device::Cuda(_) => self.run(launches::maxpool2d_forward(
                s,
                x.arg(),
                y.arg_mut(),
                argmax.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn maxpool2d_backward(
        &self,
        s: &Pool2dShape,
        argmax: &Buffer<u32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "maxpool2d_backward";
        s.check(op)?;
        self.expect(op, "argmax", argmax, s.output_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "dx", dx, s.input_len())?;
        match self {
            Device::Cpu => cpu::maxpool2d_backward(s, argmax.host()?, dy.host()?, dx.host_mut()?),
            Device::Emulated | Device::Cuda(_) => self.run(launches::maxpool2d_backward(
                s,
                argmax.arg(),
                dy.arg(),
                dx.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn relu_forward(&self, x: &Buffer<f32>, y: &mut Buffer<f32>) -> Result<()> {
        self.expect("relu_forward", "x", x, x.len())?;
        self.expect("relu_forward", "y", y, x.len())?;
        match self {
            Device::Cpu => cpu::relu_forward(x.host()?, y.host_mut()?),
            Device::Emulated | Device::Cuda(_) => {
                self.run(launches::relu_forward(x.len(), x.arg(), y.arg_mut()))?
            }
        }
        Ok(())
    }

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
            Device::Emulated | Device::Cuda(_) => self.run(launches::relu_backward(
                y.len(),
                y.arg(),
                dy.arg(),
                dx.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn linear_forward(
        &self,
        s: &LinearShape,
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
            Device::Cpu => cpu::linear_forward(s, x.host()?, w.host()?, b.host()?, y.host_mut()?),
            Device::Emulated | Device::Cuda(_) => self.run(launches::linear_forward(
                s,
                x.arg(),
                w.arg(),
                b.arg(),
                y.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn linear_backward_input(
        &self,
        s: &LinearShape,
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
            Device::Cpu => cpu::linear_backward_input(s, w.host()?, dy.host()?, dx.host_mut()?),
            Device::Emulated | Device::Cuda(_) => self.run(launches::linear_backward_input(
                s,
                w.arg(),
                dy.arg(),
                dx.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn linear_backward_weight(
        &self,
        s: &LinearShape,
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
            Device::Cpu => cpu::linear_backward_weight(
                s,
                x.host()?,
                dy.host()?,
                dw.host_mut()?,
                db.host_mut()?,
            ),
            Device::Emulated | Device::Cuda(_) => self.run(launches::linear_backward_weight(
                s,
                x.arg(),
                dy.arg(),
                dw.arg_mut(),
                db.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// Adds the batch's loss sum to totals[0] and its correct count to totals[1].
    pub fn softmax_xent_forward(
        &self,
        s: &XentShape,
        logits: &Buffer<f32>,
        labels: &Buffer<u32>,
        totals: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "softmax_xent_forward";
        s.check(op)?;
        self.expect(op, "logits", logits, s.batch * s.classes)?;
        self.expect(op, "labels", labels, s.batch)?;
        self.expect(op, "totals", totals, 2)?;
        match self {
            Device::Cpu => {
                check_labels(op, labels.host()?, s.classes)?;
                cpu::softmax_xent_forward(s, logits.host()?, labels.host()?, totals.host_mut()?)
            }
            Device::Emulated | Device::Cuda(_) => self.run(launches::softmax_xent_forward(
                s,
                logits.arg(),
                labels.arg(),
                totals.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn softmax_xent_backward(
        &self,
        s: &XentShape,
        logits: &Buffer<f32>,
        labels: &Buffer<u32>,
        dlogits: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "softmax_xent_backward";
        s.check(op)?;
        self.expect(op, "logits", logits, s.batch * s.classes)?;
        self.expect(op, "labels", labels, s.batch)?;
        self.expect(op, "dlogits", dlogits, s.batch * s.classes)?;
        match self {
            Device::Cpu => {
                check_labels(op, labels.host()?, s.classes)?;
                cpu::softmax_xent_backward(s, logits.host()?, labels.host()?, dlogits.host_mut()?)
            }
            Device::Emulated | Device::Cuda(_) => self.run(launches::softmax_xent_backward(
                s,
                logits.arg(),
                labels.arg(),
                dlogits.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn adam_update(
        &self,
        step: &AdamStep,
        params: &mut Buffer<f32>,
        grads: &Buffer<f32>,
        m: &mut Buffer<f32>,
        v: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "adam_update";
        self.expect(op, "params", params, params.len())?;
        self.expect(op, "grads", grads, params.len())?;
        self.expect(op, "m", m, params.len())?;
        self.expect(op, "v", v, params.len())?;
        match self {
            Device::Cpu => cpu::adam_update(
                step,
                params.host_mut()?,
                grads.host()?,
                m.host_mut()?,
                v.host_mut()?,
            ),
            Device::Emulated | Device::Cuda(_) => self.run(launches::adam_update(
                step,
                params.len(),
                params.arg_mut(),
                grads.arg(),
                m.arg_mut(),
                v.arg_mut(),
            ))?,
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
            Device::Emulated | Device::Cuda(_) => self.run(data_launches::gather_images(
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
            Device::Emulated | Device::Cuda(_) => self.run(data_launches::gather_labels(
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

/// On the host an index past the data would panic; the kernels write NaN (or !0 for labels).
fn check_indices(op: &'static str, indices: &[u32], count: usize) -> Result<()> {
    match indices.iter().find(|&&i| i as usize >= count) {
        Some(bad) => Err(Error::Shape {
            op,
            what: format!("index {bad} is past the {count} items"),
        }),
        None => Ok(()),
    }
}

/// On the host a label past the classes would index out of bounds; the kernels give a NaN loss,
/// which the trainer stops on.
fn check_labels(op: &'static str, labels: &[u32], classes: usize) -> Result<()> {
    match labels.iter().find(|&&l| l as usize >= classes) {
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
