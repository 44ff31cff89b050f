//! The Adam optimizer, as `torch.optim.Adam` (no weight decay, no amsgrad).

use kernels::{AdamStep, Buffer, Device};

use crate::{Error, Param, Result};

pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Steps taken so far; the bias corrections depend on it.
    steps: u32,
    /// The running means of each parameter's gradient and squared gradient, in the order the
    /// parameters are passed to [`Adam::step`].
    moments: Vec<Moments>,
}

struct Moments {
    m: Buffer<f32>,
    v: Buffer<f32>,
}

impl Adam {
    /// torch.optim.Adam defaults: β1 0.9, β2 0.999, eps 1e-8.
    pub fn new(lr: f32) -> Self {
        Adam::with_hyperparameters(lr, 0.9, 0.999, 1e-8)
    }

    pub fn with_hyperparameters(lr: f32, beta1: f32, beta2: f32, eps: f32) -> Self {
        Adam {
            lr,
            beta1,
            beta2,
            eps,
            steps: 0,
            moments: Vec::new(),
        }
    }

    /// How many steps have been taken.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Updates every parameter from its gradient; pass the same parameters, in the same order, at
    /// every step.
    pub fn step(&mut self, device: &Device, params: Vec<&mut Param>) -> Result<()> {
        if self.moments.is_empty() {
            // As torch, both moments start at zero, allocated at the first step.
            for param in &params {
                let len = param.value.data.len();
                self.moments.push(Moments {
                    m: device.zeros(len)?,
                    v: device.zeros(len)?,
                });
            }
        }
        if self.moments.len() != params.len() {
            return Err(Error::Shape {
                name: "adam".to_string(),
                what: format!(
                    "{} parameters to step, but the moments are for {}",
                    params.len(),
                    self.moments.len()
                ),
            });
        }
        self.steps += 1;
        let step = AdamStep {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            step: self.steps,
        };
        for (param, moments) in params.into_iter().zip(&mut self.moments) {
            let (m, v) = (&mut moments.m, &mut moments.v);
            device.adam_update(&step, &mut param.value.data, &param.grad.data, m, v)?;
        }
        Ok(())
    }
}
