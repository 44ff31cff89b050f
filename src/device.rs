//! The device abstraction: where buffers live and which implementation runs an op.
//!
//! Every op checks its buffers' lengths against its shape first, so a mistake in a layer is an
//! error naming the op and the operand, never a wrong answer or an out-of-bounds kernel.

use crate::launch::{KernelArg, Launch};
use crate::{cpu, AdamStep, Conv2dShape, Error, LinearShape, Pool2dShape, Result, XentShape};

/// The element types a buffer can hold.
pub trait Element: bytemuck::Pod + Default + Send + Sync + std::fmt::Debug + 'static {}
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
    Host(Vec<T>),
}

impl<T: Element> Buffer<T> {
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Host(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn host(&self) -> &[T] {
        match &self.storage {
            Storage::Host(v) => v,
        }
    }

    fn host_mut(&mut self) -> &mut [T] {
        match &mut self.storage {
            Storage::Host(v) => v,
        }
    }

    /// This buffer as a read-only kernel argument.
    pub(crate) fn arg(&self) -> KernelArg {
        match &self.storage {
            Storage::Host(v) => KernelArg::Ptr(v.as_ptr() as u64),
        }
    }

    /// This buffer as a kernel argument the kernel writes.
    pub(crate) fn arg_mut(&mut self) -> KernelArg {
        match &mut self.storage {
            Storage::Host(v) => KernelArg::Ptr(v.as_mut_ptr() as u64),
        }
    }
}

/// Which implementation runs the ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// Fast Rust ops ([`crate::cpu`]).
    Cpu,
}

impl Device {
    /// `cpu`, `cuda`, `emulated` or `auto` (the best device present).
    pub fn from_name(name: &str) -> Result<Device> {
        match name {
            "cpu" | "auto" => Ok(Device::Cpu),
            "cuda" | "emulated" => Err(Error::Device {
                device: name.to_string(),
                what: "this build has no CUDA kernels yet; use --device cpu".to_string(),
            }),
            other => Err(Error::Device {
                device: other.to_string(),
                what: "unknown device: expected cpu, cuda, emulated or auto".to_string(),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
        }
    }

    pub fn zeros<T: Element>(&self, len: usize) -> Result<Buffer<T>> {
        Ok(Buffer {
            storage: Storage::Host(vec![T::default(); len]),
        })
    }

    pub fn upload<T: Element>(&self, data: &[T]) -> Result<Buffer<T>> {
        Ok(Buffer {
            storage: Storage::Host(data.to_vec()),
        })
    }

    /// Copies host data into an existing buffer of the same length.
    pub fn write<T: Element>(&self, data: &[T], dst: &mut Buffer<T>) -> Result<()> {
        check("write", "dst", dst.len(), data.len())?;
        dst.host_mut().copy_from_slice(data);
        Ok(())
    }

    pub fn download<T: Element>(&self, buf: &Buffer<T>) -> Result<Vec<T>> {
        Ok(buf.host().to_vec())
    }

    pub fn fill_zero<T: Element>(&self, buf: &mut Buffer<T>) -> Result<()> {
        buf.host_mut().fill(T::default());
        Ok(())
    }

    /// Copies a buffer into another of the same length on this device, without a host round trip.
    pub fn copy<T: Element>(&self, src: &Buffer<T>, dst: &mut Buffer<T>) -> Result<()> {
        check("copy", "dst", dst.len(), src.len())?;
        dst.host_mut().copy_from_slice(src.host());
        Ok(())
    }

    /// Runs one kernel launch on this device's executor.
    #[allow(dead_code)]
    pub(crate) fn launch(&self, launch: Launch) -> Result<()> {
        Err(Error::Launch {
            kernel: launch.kernel.to_string(),
            what: format!("device {} runs no CUDA kernels", self.name()),
        })
    }

    /// Waits until every op issued so far has finished.
    pub fn synchronize(&self) -> Result<()> {
        Ok(())
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
        check(op, "x", x.len(), s.input_len())?;
        check(op, "weight", w.len(), s.weight_len())?;
        check(op, "bias", b.len(), s.out_channels)?;
        check(op, "y", y.len(), s.output_len())?;
        match self {
            Device::Cpu => cpu::conv2d_forward(s, x.host(), w.host(), b.host(), y.host_mut()),
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
        check(op, "weight", w.len(), s.weight_len())?;
        check(op, "dy", dy.len(), s.output_len())?;
        check(op, "dx", dx.len(), s.input_len())?;
        match self {
            Device::Cpu => cpu::conv2d_backward_input(s, w.host(), dy.host(), dx.host_mut()),
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
        check(op, "x", x.len(), s.input_len())?;
        check(op, "dy", dy.len(), s.output_len())?;
        check(op, "dweight", dw.len(), s.weight_len())?;
        check(op, "dbias", db.len(), s.out_channels)?;
        match self {
            Device::Cpu => {
                cpu::conv2d_backward_weight(s, x.host(), dy.host(), dw.host_mut(), db.host_mut())
            }
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
        check(op, "x", x.len(), s.input_len())?;
        check(op, "y", y.len(), s.output_len())?;
        check(op, "argmax", argmax.len(), s.output_len())?;
        match self {
            Device::Cpu => cpu::maxpool2d_forward(s, x.host(), y.host_mut(), argmax.host_mut()),
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
        check(op, "argmax", argmax.len(), s.output_len())?;
        check(op, "dy", dy.len(), s.output_len())?;
        check(op, "dx", dx.len(), s.input_len())?;
        match self {
            Device::Cpu => cpu::maxpool2d_backward(s, argmax.host(), dy.host(), dx.host_mut()),
        }
        Ok(())
    }

    pub fn relu_forward(&self, x: &Buffer<f32>, y: &mut Buffer<f32>) -> Result<()> {
        check("relu_forward", "y", y.len(), x.len())?;
        match self {
            Device::Cpu => cpu::relu_forward(x.host(), y.host_mut()),
        }
        Ok(())
    }

    pub fn relu_backward(
        &self,
        y: &Buffer<f32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        check("relu_backward", "dy", dy.len(), y.len())?;
        check("relu_backward", "dx", dx.len(), y.len())?;
        match self {
            Device::Cpu => cpu::relu_backward(y.host(), dy.host(), dx.host_mut()),
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
        check(op, "x", x.len(), s.batch * s.in_features)?;
        check(op, "weight", w.len(), s.out_features * s.in_features)?;
        check(op, "bias", b.len(), s.out_features)?;
        check(op, "y", y.len(), s.batch * s.out_features)?;
        match self {
            Device::Cpu => cpu::linear_forward(s, x.host(), w.host(), b.host(), y.host_mut()),
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
        check(op, "weight", w.len(), s.out_features * s.in_features)?;
        check(op, "dy", dy.len(), s.batch * s.out_features)?;
        check(op, "dx", dx.len(), s.batch * s.in_features)?;
        match self {
            Device::Cpu => cpu::linear_backward_input(s, w.host(), dy.host(), dx.host_mut()),
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
        check(op, "x", x.len(), s.batch * s.in_features)?;
        check(op, "dy", dy.len(), s.batch * s.out_features)?;
        check(op, "dweight", dw.len(), s.out_features * s.in_features)?;
        check(op, "dbias", db.len(), s.out_features)?;
        match self {
            Device::Cpu => {
                cpu::linear_backward_weight(s, x.host(), dy.host(), dw.host_mut(), db.host_mut())
            }
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
        check(op, "logits", logits.len(), s.batch * s.classes)?;
        check(op, "labels", labels.len(), s.batch)?;
        check(op, "totals", totals.len(), 2)?;
        match self {
            Device::Cpu => {
                cpu::softmax_xent_forward(s, logits.host(), labels.host(), totals.host_mut())
            }
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
        check(op, "logits", logits.len(), s.batch * s.classes)?;
        check(op, "labels", labels.len(), s.batch)?;
        check(op, "dlogits", dlogits.len(), s.batch * s.classes)?;
        match self {
            Device::Cpu => {
                cpu::softmax_xent_backward(s, logits.host(), labels.host(), dlogits.host_mut())
            }
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
        check(op, "grads", grads.len(), params.len())?;
        check(op, "m", m.len(), params.len())?;
        check(op, "v", v.len(), params.len())?;
        match self {
            Device::Cpu => cpu::adam_update(
                step,
                params.host_mut(),
                grads.host(),
                m.host_mut(),
                v.host_mut(),
            ),
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
        check("gather_images", "out", out.len(), indices.len() * image_len)?;
        match self {
            Device::Cpu => {
                cpu::gather_images(images.host(), image_len, indices.host(), out.host_mut())
            }
        }
        Ok(())
    }

    pub fn gather_labels(
        &self,
        labels: &Buffer<u8>,
        indices: &Buffer<u32>,
        out: &mut Buffer<u32>,
    ) -> Result<()> {
        check("gather_labels", "out", out.len(), indices.len())?;
        match self {
            Device::Cpu => cpu::gather_labels(labels.host(), indices.host(), out.host_mut()),
        }
        Ok(())
    }
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
