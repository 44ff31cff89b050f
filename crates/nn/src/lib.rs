//! Layers, loss, optimizer and the reference ConvNet, on top of the ops of the `kernels` crate.
//!
//! (Skeleton: the public surface the trainer uses; bodies arrive with the nn implementation.)

use std::path::Path;

use kernels::{Buffer, Device};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Op(#[from] kernels::Error),
    #[error("checkpoint {path}: {what}")]
    Checkpoint { path: String, what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A shape and a device buffer.
#[derive(Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Buffer<f32>,
}

/// A learnable tensor, its gradient, and its PyTorch state_dict name.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
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
}

pub struct ConvNet {}

impl ConvNet {
    pub fn new(device: &Device, config: ConvNetConfig, seed: u64) -> Result<Self> {
        let _ = (device, config, seed);
        todo!()
    }
    pub fn config(&self) -> &ConvNetConfig {
        todo!()
    }
    pub fn device(&self) -> &Device {
        todo!()
    }
    /// x: `[N, 1, image_size, image_size]` → logits `[N, classes]`.
    pub fn forward(&mut self, x: &Tensor) -> Result<&Tensor> {
        let _ = x;
        todo!()
    }
    /// Fills every parameter's grad from the gradient of the loss to the logits.
    pub fn backward(&mut self, dlogits: &Tensor) -> Result<()> {
        let _ = dlogits;
        todo!()
    }
    pub fn params(&self) -> Vec<&Param> {
        todo!()
    }
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        todo!()
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        let _ = path;
        todo!()
    }
    pub fn load(device: &Device, path: &Path) -> Result<Self> {
        let _ = (device, path);
        todo!()
    }
}

pub struct SoftmaxCrossEntropy {}

impl SoftmaxCrossEntropy {
    pub fn new(device: &Device) -> Self {
        let _ = device;
        todo!()
    }
    /// Adds the batch's loss sum to totals[0] and its correct count to totals[1].
    pub fn forward(
        &mut self,
        logits: &Tensor,
        labels: &Buffer<u32>,
        totals: &mut Buffer<f32>,
    ) -> Result<()> {
        let _ = (logits, labels, totals);
        todo!()
    }
    /// The gradient of the batch's mean loss to the logits.
    pub fn backward(&mut self, logits: &Tensor, labels: &Buffer<u32>) -> Result<&Tensor> {
        let _ = (logits, labels);
        todo!()
    }
}

pub struct Adam {}

impl Adam {
    /// torch.optim.Adam defaults: β1 0.9, β2 0.999, eps 1e-8.
    pub fn new(lr: f32) -> Self {
        let _ = lr;
        todo!()
    }
    pub fn step(&mut self, device: &Device, params: Vec<&mut Param>) -> Result<()> {
        let _ = (device, params);
        todo!()
    }
}
