//! Tensors: a shape over a flat, row-major device buffer (NCHW for images).

use kernels::{Buffer, Device};

use crate::{Error, Result};

/// A shape and a device buffer.
#[derive(Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Buffer<f32>,
}

/// A borrowed tensor, possibly read under another shape. Reshaping row-major data moves no
/// bytes, so [`Flatten`](crate::layers::Flatten) hands out a view rather than a copy.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub shape: &'a [usize],
    pub data: &'a Buffer<f32>,
}

impl Tensor {
    pub fn zeros(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor {
            shape: shape.to_vec(),
            data: device.zeros(shape.iter().product())?,
        })
    }

    /// Uploads row-major `values` as a tensor of `shape`.
    pub fn from_slice(device: &Device, shape: &[usize], values: &[f32]) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        if values.len() != len {
            return Err(Error::Shape {
                name: "tensor".to_string(),
                what: format!(
                    "{} values for shape {shape:?}, expected {len}",
                    values.len()
                ),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data: device.upload(values)?,
        })
    }

    /// The values, row-major, copied to the host.
    pub fn to_vec(&self, device: &Device) -> Result<Vec<f32>> {
        Ok(device.download(&self.data)?)
    }

    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            shape: &self.shape,
            data: &self.data,
        }
    }

    /// Gives this tensor `shape`, allocating a new buffer only when the element count changes:
    /// a layer's buffers are reallocated when the batch size changes, not at every step.
    pub fn resize(&mut self, device: &Device, shape: &[usize]) -> Result<()> {
        let len = shape.iter().product();
        if self.data.len() != len {
            self.data = device.zeros(len)?;
        }
        if self.shape != shape {
            self.shape.clear();
            self.shape.extend_from_slice(shape);
        }
        Ok(())
    }
}
