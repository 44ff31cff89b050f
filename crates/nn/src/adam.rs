//! The Adam optimizer, as `torch.optim.Adam` (no weight decay, no amsgrad).
//!
//! One launch updates every parameter: the moments of all tensors live in two flat buffers (each
//! tensor's at the offset of the tensors before it, in the order the parameters are passed), and
//! a table of the parameters' and gradients' addresses tells the kernel where each tensor is.
//! (The parameters themselves stay one buffer each: every op takes whole buffers, and views into
//! one flat buffer would reach into every op of the device layer for one launch's sake.)
//!
//! A step is two halves, so that the second can be captured in a CUDA graph: [`Adam::begin_step`]
//! counts the step and writes its bias corrections to a small device buffer (a host write, never
//! in a graph), and [`Adam::apply`] launches the update, which reads them from there.

use kernels::{AdamStep, Buffer, Device, TensorTable};

use crate::{Error, Param, Result};

pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Steps taken so far; the bias corrections depend on it.
    steps: u32,
    /// Allocated at the first step, as torch allocates its moments.
    state: Option<FlatState>,
    /// Moments loaded by [`Adam::load_state`] before the first step, uploaded by it.
    pending: Option<Vec<(Vec<f32>, Vec<f32>)>>,
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

/// Everything the one launch reads, on the device.
struct FlatState {
    table: TensorTable,
    m: Buffer<f32>,
    v: Buffer<f32>,
    /// This step's [`AdamStep::scalars`]: step size and √(1 − β2ᵗ).
    scalars: Buffer<f32>,
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
            state: None,
            pending: None,
        }
    }

    /// How many steps have been taken.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Updates every parameter from its gradient; pass the same parameters, in the same order, at
    /// every step.
    pub fn step(&mut self, device: &Device, mut params: Vec<&mut Param>) -> Result<()> {
        self.prepare(device, &params)?;
        self.check(&params)?;
        self.begin_step(device)?;
        self.apply(device, &mut params)
    }

    /// Fails unless `params` have the lengths of the parameters the moments are for.
    fn check(&self, params: &[&mut Param]) -> Result<()> {
        let Some(state) = &self.state else {
            return Err(not_prepared());
        };
        let lens: Vec<usize> = state.table.lens().collect();
        let given: Vec<usize> = params.iter().map(|p| p.value.data.len()).collect();
        if given != lens {
            return Err(Error::Shape {
                name: "adam".to_string(),
                what: format!(
                    "parameters of lengths {given:?} to step, but the moments are for {lens:?}"
                ),
            });
        }
        Ok(())
    }

    /// Allocates the moments and the tensor table for `params` if this is the first step.
    pub fn prepare(&mut self, device: &Device, params: &[&mut Param]) -> Result<()> {
        if self.state.is_some() {
            return Ok(());
        }
        let values: Vec<&Buffer<f32>> = params.iter().map(|p| &p.value.data).collect();
        let grads: Vec<&Buffer<f32>> = params.iter().map(|p| &p.grad.data).collect();
        let table = device.tensor_table(&values, &grads)?;
        let total = table.total_len();
        let (m, v) = match self.pending.take() {
            // As torch, both moments start at zero.
            None => (device.zeros(total)?, device.zeros(total)?),
            Some(moments) => {
                let lens: Vec<usize> = table.lens().collect();
                let (m, v) = flatten_moments(&lens, moments)?;
                (device.upload(&m)?, device.upload(&v)?)
            }
        };
        self.state = Some(FlatState {
            table,
            m,
            v,
            scalars: device.zeros(2)?,
        });
        Ok(())
    }

    /// Counts a step and writes its bias corrections where [`Adam::apply`] reads them. Not a
    /// launch: call it before replaying a captured step, outside the graph.
    pub fn begin_step(&mut self, device: &Device) -> Result<()> {
        let Some(state) = &mut self.state else {
            return Err(not_prepared());
        };
        self.steps += 1;
        let step = AdamStep {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            step: self.steps,
        };
        device.write(&step.scalars(), &mut state.scalars)?;
        Ok(())
    }

    /// The update of the step [`Adam::begin_step`] began: one launch over every parameter.
    pub fn apply(&mut self, device: &Device, params: &mut [&mut Param]) -> Result<()> {
        self.check(params)?;
        let Some(state) = &mut self.state else {
            return Err(not_prepared());
        };
        let hyper = kernels::AdamHyper {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        };
        let (mut values, grads): (Vec<&mut Buffer<f32>>, Vec<&Buffer<f32>>) = params
            .iter_mut()
            .map(|p| (&mut p.value.data, &p.grad.data))
            .unzip();
        let (m, v) = (&mut state.m, &mut state.v);
        device.adam_update_tensors(
            &hyper,
            &state.scalars,
            &state.table,
            &mut values,
            &grads,
            m,
            v,
        )?;
        Ok(())
    }

    /// The step count and each parameter's moments, in the order the parameters are passed (the
    /// state_dict order for a [`crate::ConvNet`]), copied to the host.
    pub fn state(&self, device: &Device) -> Result<AdamState> {
        let moments = match &self.state {
            None => self.pending.clone().unwrap_or_default(),
            Some(state) => {
                let (m, v) = (device.download(&state.m)?, device.download(&state.v)?);
                let mut start = 0;
                state
                    .table
                    .lens()
                    .map(|len| {
                        let range = start..start + len;
                        start = range.end;
                        (m[range.clone()].to_vec(), v[range].to_vec())
                    })
                    .collect()
            }
        };
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
        }
        match &mut self.state {
            None => self.pending = (state.steps > 0).then(|| state.moments.clone()),
            Some(flat) if state.steps == 0 => {
                device.fill_zero(&mut flat.m)?;
                device.fill_zero(&mut flat.v)?;
            }
            Some(flat) => {
                let lens: Vec<usize> = flat.table.lens().collect();
                let (m, v) = flatten_moments(&lens, state.moments.clone())?;
                device.write(&m, &mut flat.m)?;
                device.write(&v, &mut flat.v)?;
            }
        }
        self.steps = state.steps;
        Ok(())
    }
}

/// The per-tensor moments laid end to end, checked against the tensors' lengths.
fn flatten_moments(
    lens: &[usize],
    moments: Vec<(Vec<f32>, Vec<f32>)>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let fits = moments.len() == lens.len()
        && (moments.iter().zip(lens)).all(|((m, v), &len)| m.len() == len && v.len() == len);
    if !fits {
        let got: Vec<usize> = moments.iter().map(|(m, _)| m.len()).collect();
        return Err(Error::Shape {
            name: "adam".to_string(),
            what: format!("moments of lengths {got:?} for parameters of lengths {lens:?}"),
        });
    }
    let (m, v): (Vec<Vec<f32>>, Vec<Vec<f32>>) = moments.into_iter().unzip();
    Ok((m.concat(), v.concat()))
}

fn not_prepared() -> Error {
    Error::Shape {
        name: "adam".to_string(),
        what: "no parameters yet: call prepare (or step) first".to_string(),
    }
}
