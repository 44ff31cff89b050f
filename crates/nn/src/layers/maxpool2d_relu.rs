//! 2x2 max pooling with stride 2 and the ReLU after it, as PyTorch's `nn.MaxPool2d(2), nn.ReLU()`
//! in one op: one pass over memory instead of two. ReLU is monotone, so pooling then rectifying
//! equals rectifying then pooling.

use kernels::{Buffer, Device, Pool2dShape};

use crate::error::expect_shape;
use crate::{Error, Result, Tensor, TensorView};

pub struct MaxPool2dRelu {
    device: Device,
    pub(super) name: String,
    pub(super) shape: Pool2dShape,
    /// For each output, the index into x of the maximum it took: only that input receives
    /// gradient, so backward needs the positions, not x itself.
    pub(super) argmax: Buffer<u32>,
    /// The output, which the backward also reads: the ReLU passes gradient only where it is
    /// positive.
    pub(super) output: Tensor,
    pub(super) input_grad: Tensor,
}

impl MaxPool2dRelu {
    pub fn new(device: &Device, name: &str) -> Result<MaxPool2dRelu> {
        Ok(MaxPool2dRelu {
            device: device.clone(),
            name: name.to_string(),
            shape: Pool2dShape {
                batch: 0,
                channels: 0,
                height: 0,
                width: 0,
            },
            argmax: device.zeros(0)?,
            output: Tensor::zeros(device, &[0])?,
            input_grad: Tensor::zeros(device, &[0])?,
        })
    }

    /// The output of the last forward.
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// x `[N, C, H, W]` → y = relu(maxpool(x)) `[N, C, H/2, W/2]`; odd trailing rows and columns
    /// are dropped.
    pub fn forward(&mut self, x: TensorView) -> Result<TensorView<'_>> {
        let &[batch, channels, height, width] = x.shape else {
            return Err(Error::Shape {
                name: self.name.clone(),
                what: format!("input has shape {:?}, expected [N, C, H, W]", x.shape),
            });
        };
        let s = Pool2dShape {
            batch,
            channels,
            height,
            width,
        };
        self.prepare(s)?;
        let (y, argmax) = (&mut self.output.data, &mut self.argmax);
        self.device.maxpool2d_relu_forward(&s, x.data, y, argmax)?;
        Ok(self.output.view())
    }

    /// Sizes the output and argmax for a forward of shape `s`.
    pub(super) fn prepare(&mut self, s: Pool2dShape) -> Result<()> {
        self.shape = s;
        let shape = [s.batch, s.channels, s.out_height(), s.out_width()];
        self.output.resize(&self.device, &shape)?;
        if self.argmax.len() != s.output_len() {
            self.argmax = self.device.zeros(s.output_len())?;
        }
        Ok(())
    }

    /// Routes each output's gradient to the input that was its maximum, where the output is
    /// positive; the rest get zero.
    pub fn backward(&mut self, dy: TensorView) -> Result<TensorView<'_>> {
        expect_shape(&self.name, "dy", dy.shape, &self.output.shape)?;
        let s = self.shape;
        self.input_grad
            .resize(&self.device, &[s.batch, s.channels, s.height, s.width])?;
        let (y, dx) = (&self.output.data, &mut self.input_grad.data);
        self.device
            .maxpool2d_relu_backward(&s, &self.argmax, y, dy.data, dx)?;
        Ok(self.input_grad.view())
    }
}
