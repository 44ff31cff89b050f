//! The rectifier, y = max(x, 0).

use kernels::Device;

use crate::error::expect_shape;
use crate::{Result, Tensor, TensorView};

pub struct ReLU {
    device: Device,
    name: String,
    /// The output of the last forward: the gradient passes exactly where y > 0 (as where x > 0),
    /// and the next layer needs y anyway, so x need not be kept.
    output: Tensor,
    input_grad: Tensor,
}

impl ReLU {
    pub fn new(device: &Device, name: &str) -> Result<ReLU> {
        Ok(ReLU {
            device: device.clone(),
            name: name.to_string(),
            output: Tensor::zeros(device, &[0])?,
            input_grad: Tensor::zeros(device, &[0])?,
        })
    }

    /// The output of the last forward.
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// y = max(x, 0), elementwise, any shape.
    pub fn forward(&mut self, x: TensorView) -> Result<TensorView<'_>> {
        self.output.resize(&self.device, x.shape)?;
        self.device.relu_forward(x.data, &mut self.output.data)?;
        Ok(self.output.view())
    }

    /// dx = dy where y > 0, else 0.
    pub fn backward(&mut self, dy: TensorView) -> Result<TensorView<'_>> {
        expect_shape(&self.name, "dy", dy.shape, &self.output.shape)?;
        self.input_grad.resize(&self.device, dy.shape)?;
        let y = &self.output.data;
        self.device
            .relu_backward(y, dy.data, &mut self.input_grad.data)?;
        Ok(self.input_grad.view())
    }
}
