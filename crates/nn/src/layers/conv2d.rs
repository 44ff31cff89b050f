//! 2-D convolution, as PyTorch's `nn.Conv2d` with a square kernel, stride 1 and zero padding.

use kernels::{Conv2dShape, Device, Precision};
use rand::rngs::StdRng;

use super::MaxPool2dRelu;
use crate::error::expect_shape;
use crate::{init, Error, Param, Result, Tensor, TensorView};

pub struct Conv2d {
    device: Device,
    name: String,
    /// `[out_channels, in_channels, kernel, kernel]`.
    weight: Param,
    /// `[out_channels]`.
    bias: Param,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    padding: usize,
    precision: Precision,
    /// The shape of the last forward's input. The input itself is not kept: backward takes it
    /// again, from the network, which keeps it alive anyway (it is the previous layer's output).
    input_shape: Vec<usize>,
    output: Tensor,
    input_grad: Tensor,
}

impl Conv2d {
    /// A convolution initialised as PyTorch does, its parameters named `{name}.weight` and
    /// `{name}.bias`.
    pub fn new(
        device: &Device,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        rng: &mut StdRng,
    ) -> Result<Conv2d> {
        let fan_in = in_channels * kernel * kernel;
        let weight_shape = [out_channels, in_channels, kernel, kernel];
        let weight = init::uniform_fan_in(rng, weight_shape.iter().product(), fan_in);
        let bias = init::uniform_fan_in(rng, out_channels, fan_in);
        Ok(Conv2d {
            device: device.clone(),
            name: name.to_string(),
            weight: Param::new(device, format!("{name}.weight"), &weight_shape, &weight)?,
            bias: Param::new(device, format!("{name}.bias"), &[out_channels], &bias)?,
            in_channels,
            out_channels,
            kernel,
            padding,
            precision: Precision::Fp32,
            input_shape: Vec::new(),
            output: Tensor::zeros(device, &[0])?,
            input_grad: Tensor::zeros(device, &[0])?,
        })
    }

    /// How the products are computed (fp32 until set).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    pub fn params(&self) -> [&Param; 2] {
        [&self.weight, &self.bias]
    }

    pub fn params_mut(&mut self) -> [&mut Param; 2] {
        [&mut self.weight, &mut self.bias]
    }

    /// x `[N, in_channels, H, W]` → y `[N, out_channels, H', W']`.
    pub fn forward(&mut self, x: TensorView) -> Result<TensorView<'_>> {
        let s = self.op_shape(x.shape)?;
        self.input_shape.clear();
        self.input_shape.extend_from_slice(x.shape);
        let y_shape = [s.batch, s.out_channels, s.out_height(), s.out_width()];
        self.output.resize(&self.device, &y_shape)?;
        let (w, b) = (&self.weight.value.data, &self.bias.value.data);
        self.device
            .conv2d_forward(&s, self.precision, x.data, w, b, &mut self.output.data)?;
        Ok(self.output.view())
    }

    /// Fills the weight and bias gradients and returns the gradient to the input; `x` is the
    /// input of the last forward, unchanged since.
    pub fn backward(&mut self, x: TensorView, dy: TensorView) -> Result<TensorView<'_>> {
        self.backward_params(x, dy)?;
        let s = self.op_shape(x.shape)?;
        self.input_grad.resize(&self.device, x.shape)?;
        let w = &self.weight.value.data;
        self.device.conv2d_backward_input(
            &s,
            self.precision,
            w,
            dy.data,
            &mut self.input_grad.data,
        )?;
        Ok(self.input_grad.view())
    }

    /// Fills only the weight and bias gradients: all a first layer needs, whose input is data.
    pub fn backward_params(&mut self, x: TensorView, dy: TensorView) -> Result<()> {
        expect_shape(&self.name, "x", x.shape, &self.input_shape)?;
        expect_shape(&self.name, "dy", dy.shape, &self.output.shape)?;
        let s = self.op_shape(x.shape)?;
        let (dw, db) = (&mut self.weight.grad.data, &mut self.bias.grad.data);
        self.device
            .conv2d_backward_weight(&s, self.precision, x.data, dy.data, dw, db)?;
        Ok(())
    }

    /// This convolution then `pool` (max-pool and ReLU), as one device op: x `[N, in_channels,
    /// H, W]` → `pool`'s output `[N, out_channels, H'/2, W'/2]`. The convolution's own output
    /// is the op's scratch (the cpu device leaves it unwritten where it fuses the two).
    pub fn forward_pooled<'p>(
        &mut self,
        x: TensorView,
        pool: &'p mut MaxPool2dRelu,
    ) -> Result<TensorView<'p>> {
        let s = self.op_shape(x.shape)?;
        self.input_shape.clear();
        self.input_shape.extend_from_slice(x.shape);
        let y_shape = [s.batch, s.out_channels, s.out_height(), s.out_width()];
        self.output.resize(&self.device, &y_shape)?;
        pool.prepare(s.pool2x2())?;
        let (w, b) = (&self.weight.value.data, &self.bias.value.data);
        self.device.conv2d_maxpool2d_relu_forward(
            &s,
            self.precision,
            x.data,
            w,
            b,
            &mut self.output.data,
            &mut pool.output.data,
            &mut pool.argmax,
        )?;
        Ok(pool.output.view())
    }

    /// The backward of [`Conv2d::forward_pooled`], from the gradient to `pool`'s output: fills
    /// the weight and bias gradients and returns the gradient to x.
    pub fn backward_pooled(
        &mut self,
        x: TensorView,
        pool: &mut MaxPool2dRelu,
        dy: TensorView,
    ) -> Result<TensorView<'_>> {
        self.pooled_backward(x, pool, dy, true)?;
        Ok(self.input_grad.view())
    }

    /// [`Conv2d::backward_pooled`] without the gradient to x: all a first layer needs, whose
    /// input is data (and which the cpu device then computes without leaving the cache).
    pub fn backward_params_pooled(
        &mut self,
        x: TensorView,
        pool: &mut MaxPool2dRelu,
        dy: TensorView,
    ) -> Result<()> {
        self.pooled_backward(x, pool, dy, false)
    }

    fn pooled_backward(
        &mut self,
        x: TensorView,
        pool: &mut MaxPool2dRelu,
        dy: TensorView,
        input_grad: bool,
    ) -> Result<()> {
        expect_shape(&self.name, "x", x.shape, &self.input_shape)?;
        expect_shape(&pool.name, "dy", dy.shape, &pool.output.shape)?;
        let s = self.op_shape(x.shape)?;
        pool.input_grad.resize(&self.device, &self.output.shape)?;
        if input_grad {
            self.input_grad.resize(&self.device, x.shape)?;
        }
        let dx = input_grad.then_some(&mut self.input_grad.data);
        let (dw, db) = (&mut self.weight.grad.data, &mut self.bias.grad.data);
        self.device.maxpool2d_relu_conv2d_backward(
            &s,
            self.precision,
            x.data,
            &self.weight.value.data,
            &pool.argmax,
            &pool.output.data,
            dy.data,
            &mut pool.input_grad.data,
            dx,
            dw,
            db,
        )?;
        Ok(())
    }

    /// The op's shape for an input of `x_shape`, which must be `[N, in_channels, H, W]` with the
    /// padded image at least as large as the kernel.
    fn op_shape(&self, x_shape: &[usize]) -> Result<Conv2dShape> {
        let (in_channels, kernel) = (self.in_channels, self.kernel);
        match *x_shape {
            [batch, c, height, width]
                if c == in_channels && height.min(width) + 2 * self.padding >= kernel =>
            {
                Ok(Conv2dShape {
                    batch,
                    in_channels,
                    out_channels: self.out_channels,
                    height,
                    width,
                    kernel,
                    stride: 1,
                    padding: self.padding,
                })
            }
            _ => Err(Error::Shape {
                name: self.name.clone(),
                what: format!(
                    "input has shape {x_shape:?}, expected [N, {in_channels}, H, W] with H, W ≥ {}",
                    kernel.saturating_sub(2 * self.padding)
                ),
            }),
        }
    }
}
