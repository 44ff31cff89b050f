//! A fully connected layer, as PyTorch's `nn.Linear`: y = x·Wᵀ + b, optionally followed by a
//! ReLU applied in the product's epilogue (`relu(fc(x))` in one op, as the ConvNet's fc1 and
//! fc2 have it).

use kernels::{Activation, AdamHyper, Buffer, Device, LinearShape, Precision};
use rand::rngs::StdRng;

use crate::error::expect_shape;
use crate::{init, Error, Param, Result, Tensor, TensorView};

/// Adam's step for one weight, applied by the layer ([`Linear::backward_stepping_weight`]):
/// the hyperparameters, the step's scalars on the device, and the weight's own moments.
pub struct WeightStep<'a> {
    pub hyper: AdamHyper,
    pub scalars: &'a Buffer<f32>,
    pub m: &'a mut Buffer<f32>,
    pub v: &'a mut Buffer<f32>,
}

pub struct Linear {
    device: Device,
    name: String,
    /// `[out_features, in_features]`.
    weight: Param,
    /// `[out_features]`.
    bias: Param,
    in_features: usize,
    out_features: usize,
    /// What the epilogue applies to x·Wᵀ + b.
    activation: Activation,
    precision: Precision,
    /// The shape of the last forward's input. The input itself is not kept: backward takes it
    /// again, from the network, which keeps it alive anyway (it is the previous layer's output).
    input_shape: Vec<usize>,
    output: Tensor,
    /// With the ReLU: the gradient to x·Wᵀ + b, dy masked where the output is 0.
    pre_activation_grad: Tensor,
    input_grad: Tensor,
}

impl Linear {
    /// activation(x·Wᵀ + b) (`Activation::Relu` in the product's epilogue), initialised as
    /// PyTorch does, its parameters named `{name}.weight` and `{name}.bias`.
    pub fn new(
        device: &Device,
        name: &str,
        in_features: usize,
        out_features: usize,
        activation: Activation,
        rng: &mut StdRng,
    ) -> Result<Linear> {
        let weight = init::uniform_fan_in(rng, out_features * in_features, in_features);
        let bias = init::uniform_fan_in(rng, out_features, in_features);
        let weight_shape = [out_features, in_features];
        Ok(Linear {
            device: device.clone(),
            name: name.to_string(),
            weight: Param::new(device, format!("{name}.weight"), &weight_shape, &weight)?,
            bias: Param::new(device, format!("{name}.bias"), &[out_features], &bias)?,
            in_features,
            out_features,
            activation,
            precision: Precision::Fp32,
            input_shape: Vec::new(),
            output: Tensor::zeros(device, &[0])?,
            pre_activation_grad: Tensor::zeros(device, &[0])?,
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

    /// The output of the last forward, `[N, out_features]`.
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// x `[N, in_features]` → y `[N, out_features]`.
    pub fn forward(&mut self, x: TensorView) -> Result<TensorView<'_>> {
        let s = self.op_shape(x.shape)?;
        self.input_shape.clear();
        self.input_shape.extend_from_slice(x.shape);
        self.output
            .resize(&self.device, &[s.batch, s.out_features])?;
        let (w, b) = (&self.weight.value.data, &self.bias.value.data);
        self.device.linear_forward(
            &s,
            self.precision,
            self.activation,
            x.data,
            w,
            b,
            &mut self.output.data,
        )?;
        Ok(self.output.view())
    }

    /// Fills the weight and bias gradients and returns the gradient to the input, dy·W; `x` is
    /// the input of the last forward, unchanged since.
    pub fn backward(&mut self, x: TensorView, dy: TensorView) -> Result<TensorView<'_>> {
        self.backward_params(x, dy)?;
        let s = self.op_shape(x.shape)?;
        self.input_grad.resize(&self.device, x.shape)?;
        let w = &self.weight.value.data;
        let dz = match self.activation {
            Activation::Relu => &self.pre_activation_grad.data,
            Activation::None => dy.data,
        };
        self.device
            .linear_backward_input(&s, self.precision, w, dz, &mut self.input_grad.data)?;
        Ok(self.input_grad.view())
    }

    /// Fills only the weight gradient dzᵀ·x and the bias gradient Σ_batch dz, where dz is dy
    /// (or, with the ReLU, dy where the output is positive and 0 elsewhere).
    pub fn backward_params(&mut self, x: TensorView, dy: TensorView) -> Result<()> {
        let s = self.backward_shape(x, dy)?;
        self.mask_output_grad(dy)?;
        let dz = match self.activation {
            Activation::Relu => &self.pre_activation_grad.data,
            Activation::None => dy.data,
        };
        let (dw, db) = (&mut self.weight.grad.data, &mut self.bias.grad.data);
        self.device
            .linear_backward_weight(&s, self.precision, x.data, dz, dw, db)?;
        Ok(())
    }

    /// [`Linear::backward`], except that the weight takes Adam's step (`step`, its own moments)
    /// in the op that computes its gradient, which is never stored (the weight's `grad` keeps
    /// what it held); the bias gradient is filled for the bias's own step. The input gradient is
    /// computed first, from the weight before its step. Only where the device
    /// [fuses weight updates](kernels::Device::fuses_weight_updates).
    pub fn backward_stepping_weight(
        &mut self,
        x: TensorView,
        dy: TensorView,
        step: WeightStep,
    ) -> Result<TensorView<'_>> {
        let s = self.backward_shape(x, dy)?;
        self.mask_output_grad(dy)?;
        let dz = match self.activation {
            Activation::Relu => &self.pre_activation_grad.data,
            Activation::None => dy.data,
        };
        self.input_grad.resize(&self.device, x.shape)?;
        let w = &mut self.weight.value.data;
        self.device
            .linear_backward_input(&s, self.precision, w, dz, &mut self.input_grad.data)?;
        self.device.linear_backward_weight_adam(
            &s,
            self.precision,
            x.data,
            dz,
            (&step.hyper, step.scalars),
            (w, step.m, step.v),
            &mut self.bias.grad.data,
        )?;
        Ok(self.input_grad.view())
    }

    fn backward_shape(&self, x: TensorView, dy: TensorView) -> Result<LinearShape> {
        expect_shape(&self.name, "x", x.shape, &self.input_shape)?;
        expect_shape(&self.name, "dy", dy.shape, &self.output.shape)?;
        self.op_shape(x.shape)
    }

    /// With the ReLU, writes dz, the gradient to x·Wᵀ + b: dy where the output is positive, 0
    /// elsewhere (without, dz is dy itself).
    fn mask_output_grad(&mut self, dy: TensorView) -> Result<()> {
        if self.activation == Activation::Relu {
            let dz = &mut self.pre_activation_grad;
            dz.resize(&self.device, dy.shape)?;
            self.device
                .relu_backward(&self.output.data, dy.data, &mut dz.data)?;
        }
        Ok(())
    }

    /// The op's shape for an input of `x_shape`, which must be `[N, in_features]`.
    fn op_shape(&self, x_shape: &[usize]) -> Result<LinearShape> {
        match *x_shape {
            [batch, features] if features == self.in_features => Ok(LinearShape {
                batch,
                in_features: self.in_features,
                out_features: self.out_features,
            }),
            _ => Err(Error::Shape {
                name: self.name.clone(),
                what: format!(
                    "input has shape {x_shape:?}, expected [N, {}]",
                    self.in_features
                ),
            }),
        }
    }
}
