//! Learnable parameters.

use kernels::Device;

use crate::{Result, Tensor};

/// A learnable tensor, its gradient, and its PyTorch state_dict name.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
}

impl Param {
    /// A parameter holding `values` (row-major, of `shape`), with a zero gradient.
    pub fn new(device: &Device, name: String, shape: &[usize], values: &[f32]) -> Result<Param> {
        Ok(Param {
            name,
            value: Tensor::from_slice(device, shape, values)?,
            grad: Tensor::zeros(device, shape)?,
        })
    }
}
