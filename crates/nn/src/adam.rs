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

/// Adam's state on the host: what a resumed run needs to continue exactly where it stopped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamState {
    /// Steps taken so far.
    pub steps: u32,
    /// Each parameter's first and second moments `(m, v)`, in state_dict order; empty before the
    /// first step.
    pub moments: Vec<(Vec<f32>, Vec<f32>)>,
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

    /// The step count and the moments, copied to the host.
    pub fn state(&self, device: &Device) -> Result<AdamState> {
        let moments = self
            .moments
            .iter()
            .map(|mo| Ok((device.download(&mo.m)?, device.download(&mo.v)?)))
            .collect::<Result<_>>()?;
        Ok(AdamState {
            steps: self.steps,
            moments,
        })
    }

    /// Continues from `state`, which must hold a moment pair for each of `params` (state_dict
    /// order) of its length, or none at all (no step taken yet).
    pub fn load_state(
        &mut self,
        device: &Device,
        state: &AdamState,
        params: &[&Param],
    ) -> Result<()> {
        let mismatch = |what: String| Error::Shape {
            name: "adam state".to_string(),
            what,
        };
        if !state.moments.is_empty() && state.moments.len() != params.len() {
            return Err(mismatch(format!(
                "moments for {} parameters, expected {}",
                state.moments.len(),
                params.len()
            )));
        }
        if state.moments.is_empty() != (state.steps == 0) {
            return Err(mismatch(format!(
                "{} steps taken but moments for {} parameters",
                state.steps,
                state.moments.len()
            )));
        }
        let mut moments = Vec::with_capacity(state.moments.len());
        for ((m, v), param) in state.moments.iter().zip(params) {
            let len = param.value.data.len();
            if m.len() != len || v.len() != len {
                return Err(mismatch(format!(
                    "moments of {} have {} and {} values, expected {len}",
                    param.name,
                    m.len(),
                    v.len()
                )));
            }
            moments.push(Moments {
                m: device.upload(m)?,
                v: device.upload(v)?,
            });
        }
        self.steps = state.steps;
        self.moments = moments;
        Ok(())
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
