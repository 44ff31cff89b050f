//! The reference network, PyTorch's MNIST ConvNet:
//!
//! ```text
//! conv2d = Sequential(Conv2d(1, 32, 3, padding=1), MaxPool2d(2), ReLU(),
//!                     Conv2d(32, 64, 3, padding=1), MaxPool2d(2), ReLU())
//! fc1 = Linear(3136, 1024); fc2 = Linear(1024, 512); fc3 = Linear(512, 10)
//! forward: conv2d → flatten → relu(fc1) → relu(fc2) → fc3
//! ```
//!
//! Each `MaxPool2d(2), ReLU()` pair runs as one fused op, and the ReLUs after fc1 and fc2 run in
//! their products' epilogues.
//!
//! The widths come from [`ConvNetConfig`]; saving and loading are in `checkpoint.rs`.

use kernels::{Activation, Device, Precision};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::layers::{Conv2d, Flatten, Linear, MaxPool2dRelu};
use crate::{Adam, Error, Param, Result, Tensor};

/// A tensor copied to the host: row-major values of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl HostTensor {
    fn of(device: &Device, tensor: &Tensor) -> Result<HostTensor> {
        Ok(HostTensor {
            shape: tensor.shape.clone(),
            values: tensor.to_vec(device)?,
        })
    }
}

/// What each layer of the network computed in one forward, copied to the host. The convolutions
/// run fused with their max-pool and ReLU, so their maps are seen after both, as the next layer
/// reads them.
#[derive(Clone, Debug, PartialEq)]
pub struct Activations {
    /// The images as the network reads them: `[N, 1, side, side]`.
    pub input: HostTensor,
    /// relu(maxpool(conv1(x))): `[N, conv1_channels, side/2, side/2]`.
    pub conv1_pooled: HostTensor,
    /// relu(maxpool(conv2(·))): `[N, conv2_channels, side/4, side/4]`.
    pub conv2_pooled: HostTensor,
    /// relu(fc1(·)): `[N, hidden1]`.
    pub fc1: HostTensor,
    /// relu(fc2(·)): `[N, hidden2]`.
    pub fc2: HostTensor,
    /// fc3(·): `[N, classes]`.
    pub logits: HostTensor,
}

/// The widths of the reference network; smaller ones serve the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvNetConfig {
    pub conv1_channels: usize,
    pub conv2_channels: usize,
    pub hidden1: usize,
    pub hidden2: usize,
    pub classes: usize,
    pub image_size: usize,
}

impl ConvNetConfig {
    pub fn reference() -> Self {
        ConvNetConfig {
            conv1_channels: 32,
            conv2_channels: 64,
            hidden1: 1024,
            hidden2: 512,
            classes: 10,
            image_size: 28,
        }
    }

    /// fc1's input: conv2's channels over the image after two 2x2 pools (3136 = 64·7·7).
    pub fn flat_features(&self) -> usize {
        let side = self.image_size / 4;
        self.conv2_channels * side * side
    }

    fn validate(&self) -> Result<()> {
        let widths = [
            self.conv1_channels,
            self.conv2_channels,
            self.hidden1,
            self.hidden2,
            self.classes,
        ];
        if widths.contains(&0) || self.image_size < 4 {
            return Err(Error::Shape {
                name: "ConvNetConfig".to_string(),
                what: format!("{self:?}: every width must be positive and the image at least 4x4"),
            });
        }
        Ok(())
    }
}

pub struct ConvNet {
    device: Device,
    config: ConvNetConfig,
    precision: Precision,
    conv1: Conv2d,
    /// `conv2d.1` and `conv2d.2`, max-pool and ReLU fused.
    pool1: MaxPool2dRelu,
    conv2: Conv2d,
    /// `conv2d.4` and `conv2d.5`.
    pool2: MaxPool2dRelu,
    flatten: Flatten,
    /// relu(fc1(x)), the ReLU in the product's epilogue.
    fc1: Linear,
    /// relu(fc2(x)).
    fc2: Linear,
    fc3: Linear,
}

impl ConvNet {
    /// A network initialised as PyTorch does, reproducibly from `seed`.
    pub fn new(device: &Device, config: ConvNetConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let c = config;
        let rng = &mut StdRng::seed_from_u64(seed);
        Ok(ConvNet {
            device: device.clone(),
            config,
            precision: Precision::Fp32,
            conv1: Conv2d::new(device, "conv2d.0", 1, c.conv1_channels, 3, 1, rng)?,
            pool1: MaxPool2dRelu::new(device, "conv2d.1-2")?,
            conv2: Conv2d::new(
                device,
                "conv2d.3",
                c.conv1_channels,
                c.conv2_channels,
                3,
                1,
                rng,
            )?,
            pool2: MaxPool2dRelu::new(device, "conv2d.4-5")?,
            flatten: Flatten::new(),
            fc1: Linear::new(
                device,
                "fc1",
                c.flat_features(),
                c.hidden1,
                Activation::Relu,
                rng,
            )?,
            fc2: Linear::new(device, "fc2", c.hidden1, c.hidden2, Activation::Relu, rng)?,
            fc3: Linear::new(device, "fc3", c.hidden2, c.classes, Activation::None, rng)?,
        })
    }

    pub fn config(&self) -> &ConvNetConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How the convolutions and linear layers multiply: fp32 (the default) or TF32 (on the
    /// kernels only; the cpu device refuses it at the first op).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.conv1.set_precision(precision);
        self.conv2.set_precision(precision);
        self.fc1.set_precision(precision);
        self.fc2.set_precision(precision);
        self.fc3.set_precision(precision);
    }

    /// x: `[N, 1, image_size, image_size]` → logits `[N, classes]`.
    pub fn forward(&mut self, x: &Tensor) -> Result<&Tensor> {
        let side = self.config.image_size;
        if !matches!(x.shape[..], [n, 1, h, w] if n > 0 && h == side && w == side) {
            return Err(Error::Shape {
                name: "ConvNet".to_string(),
                what: format!(
                    "input has shape {:?}, expected [N, 1, {side}, {side}]",
                    x.shape
                ),
            });
        }
        let x = self.conv1.forward_pooled(x.view(), &mut self.pool1)?;
        let x = self.conv2.forward_pooled(x, &mut self.pool2)?;
        let x = self.flatten.forward(x)?;
        let x = self.fc1.forward(x)?;
        let x = self.fc2.forward(x)?;
        self.fc3.forward(x)?;
        Ok(self.fc3.output())
    }

    /// [`ConvNet::forward`], and every layer's output copied to the host. The logits are the
    /// same bits as the plain forward's: the same ops run, only the copies are added.
    pub fn forward_traced(&mut self, x: &Tensor) -> Result<Activations> {
        self.forward(x)?;
        let device = &self.device;
        Ok(Activations {
            input: HostTensor::of(device, x)?,
            conv1_pooled: HostTensor::of(device, self.pool1.output())?,
            conv2_pooled: HostTensor::of(device, self.pool2.output())?,
            fc1: HostTensor::of(device, self.fc1.output())?,
            fc2: HostTensor::of(device, self.fc2.output())?,
            logits: HostTensor::of(device, self.fc3.output())?,
        })
    }

    /// conv1's filters, `[conv1_channels, 1, 3, 3]`: the only weights that read as pictures.
    pub fn conv1_filters(&self) -> Result<HostTensor> {
        HostTensor::of(&self.device, &self.conv1.params()[0].value)
    }

    /// Fills every parameter's grad from the gradient of the loss to the logits; `x` is the
    /// input of the last forward, unchanged since. Each layer's input is read where it lives
    /// (the previous layer's output), never copied.
    pub fn backward(&mut self, x: &Tensor, dlogits: &Tensor) -> Result<()> {
        self.backward_with(x, dlogits, None)
    }

    /// Per parameter (state_dict order), whether [`ConvNet::backward_stepping`] steps it in its
    /// layer: fc1's weight (3.2 M of the 3.8 M parameters) where the device
    /// [fuses weight updates](kernels::Device::fuses_weight_updates); else none.
    pub fn stepped_in_layer(&self) -> Vec<bool> {
        let fused = self.device.fuses_weight_updates();
        let params = self.params();
        let fc1_weight = self.fc1.params()[0];
        params
            .iter()
            .map(|&p| fused && std::ptr::eq(p, fc1_weight))
            .collect()
    }

    /// [`ConvNet::backward`], except that the parameters [`ConvNet::stepped_in_layer`] names
    /// take `adam`'s step (begun: [`Adam::begin_step`]) in the op that computes their
    /// gradient, which then is not stored (see `Linear::backward_stepping_weight`);
    /// [`Adam::apply`] steps the rest.
    pub fn backward_stepping(
        &mut self,
        x: &Tensor,
        dlogits: &Tensor,
        adam: &mut Adam,
    ) -> Result<()> {
        self.backward_with(x, dlogits, Some(adam))
    }

    fn backward_with(
        &mut self,
        x: &Tensor,
        dlogits: &Tensor,
        adam: Option<&mut Adam>,
    ) -> Result<()> {
        let fc1_weight = self.stepped_in_layer().iter().position(|&s| s);
        let d = self
            .fc3
            .backward(self.fc2.output().view(), dlogits.view())?;
        let d = self.fc2.backward(self.fc1.output().view(), d)?;
        let fc1_input = self.flatten.output(&self.pool2.output().data);
        let d = match (adam, fc1_weight) {
            (Some(adam), Some(index)) => {
                (self.fc1).backward_stepping_weight(fc1_input, d, adam.weight_step(index)?)?
            }
            _ => self.fc1.backward(fc1_input, d)?,
        };
        let d = self.flatten.backward(d)?;
        let conv2_input = self.pool1.output().view();
        let d = self
            .conv2
            .backward_pooled(conv2_input, &mut self.pool2, d)?;
        // conv1's input is the data: nothing upstream wants its gradient.
        self.conv1
            .backward_params_pooled(x.view(), &mut self.pool1, d)
    }

    /// Every parameter, in state_dict order.
    pub fn params(&self) -> Vec<&Param> {
        [
            self.conv1.params(),
            self.conv2.params(),
            self.fc1.params(),
            self.fc2.params(),
            self.fc3.params(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Every parameter, in state_dict order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        [
            self.conv1.params_mut(),
            self.conv2.params_mut(),
            self.fc1.params_mut(),
            self.fc2.params_mut(),
            self.fc3.params_mut(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
