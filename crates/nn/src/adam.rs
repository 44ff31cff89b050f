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
//!
//! A parameter can instead be stepped by its layer, in the op that computes its gradient (on the
//! cpu device, fc1's weight: [`crate::layers::Linear::backward_stepping_weight`]). Its moments
//! are then its own buffers ([`Adam::weight_step`]), outside the flat ones, and
//! [`Adam::apply`] steps only the others; [`Adam::state`] reads them all, in order, alike.

use kernels::{AdamHyper, AdamStep, Buffer, Device, TensorTable};

use crate::layers::WeightStep;
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

/// Everything the one launch reads, on the device, and the moments of the parameters their
/// layers step.
struct FlatState {
    /// The parameters [`Adam::apply`] steps: those no layer steps.
    table: TensorTable,
    m: Buffer<f32>,
    v: Buffer<f32>,
    /// This step's [`AdamStep::scalars`]: step size and √(1 − β2ᵗ).
    scalars: Buffer<f32>,
    /// Every parameter's length, in the order passed.
    lens: Vec<usize>,
    /// Per parameter, its own moments `(m, v)` where its layer steps it; None where they lie
    /// in `m` and `v`.
    own: Vec<Option<(Buffer<f32>, Buffer<f32>)>>,
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
        let lens = &state.lens;
        let given: Vec<usize> = params.iter().map(|p| p.value.data.len()).collect();
        if given != *lens {
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
        self.prepare_stepping(device, params, &vec![false; params.len()])
    }

    /// [`Adam::prepare`], where `in_layer[i]` says that params[i] is stepped by its layer
    /// ([`Adam::weight_step`]), not by [`Adam::apply`]. Every later step must say the same.
    pub fn prepare_stepping(
        &mut self,
        device: &Device,
        params: &[&mut Param],
        in_layer: &[bool],
    ) -> Result<()> {
        if let Some(state) = &self.state {
            let prepared: Vec<bool> = state.own.iter().map(Option::is_some).collect();
            if prepared != in_layer {
                return Err(Error::Shape {
                    name: "adam".to_string(),
                    what: format!(
                        "parameters stepped in their layers {in_layer:?}, but prepared for \
                         {prepared:?}"
                    ),
                });
            }
            return Ok(());
        }
        if in_layer.len() != params.len() {
            return Err(Error::Shape {
                name: "adam".to_string(),
                what: format!(
                    "{} flags for {} parameters stepped in their layers",
                    in_layer.len(),
                    params.len()
                ),
            });
        }
        let lens: Vec<usize> = params.iter().map(|p| p.value.data.len()).collect();
        // As torch, both moments start at zero.
        let moments = match self.pending.take() {
            None => lens.iter().map(|&l| (vec![0.0; l], vec![0.0; l])).collect(),
            Some(moments) => moments,
        };
        let (flat, own) = split_moments(&lens, moments, in_layer)?;
        let (values, grads): (Vec<&Buffer<f32>>, Vec<&Buffer<f32>>) = params
            .iter()
            .zip(in_layer)
            .filter(|(_, &in_layer)| !in_layer)
            .map(|(p, _)| (&p.value.data, &p.grad.data))
            .unzip();
        let table = device.tensor_table(&values, &grads)?;
        let (m, v) = flatten_moments(&table.lens().collect::<Vec<_>>(), flat)?;
        let own = own
            .into_iter()
            .map(|moments| match moments {
                None => Ok(None),
                Some((m, v)) => Ok(Some((device.upload(&m)?, device.upload(&v)?))),
            })
            .collect::<Result<_>>()?;
        self.state = Some(FlatState {
            table,
            m: device.upload(&m)?,
            v: device.upload(&v)?,
            scalars: device.zeros(2)?,
            lens,
            own,
        });
        Ok(())
    }

    /// The step [`Adam::begin_step`] began, for params[index], which its layer steps (see
    /// [`Adam::prepare_stepping`]): the hyperparameters, the step's scalars and its moments.
    pub fn weight_step(&mut self, index: usize) -> Result<WeightStep<'_>> {
        let Some(state) = &mut self.state else {
            return Err(not_prepared());
        };
        let Some(Some((m, v))) = state.own.get_mut(index) else {
            return Err(Error::Shape {
                name: "adam".to_string(),
                what: format!("parameter {index} is not stepped by its layer"),
            });
        };
        Ok(WeightStep {
            hyper: AdamHyper {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
            },
            scalars: &state.scalars,
            m,
            v,
        })
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
        // The parameters their layers step have had their step.
        let (mut values, grads): (Vec<&mut Buffer<f32>>, Vec<&Buffer<f32>>) = params
            .iter_mut()
            .zip(&state.own)
            .filter(|(_, own)| own.is_none())
            .map(|(p, _)| (&mut p.value.data, &p.grad.data))
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
                let mut moments = Vec::with_capacity(state.lens.len());
                for (&len, own) in state.lens.iter().zip(&state.own) {
                    moments.push(match own {
                        Some((m, v)) => (device.download(m)?, device.download(v)?),
                        None => {
                            let range = start..start + len;
                            start = range.end;
                            (m[range.clone()].to_vec(), v[range].to_vec())
                        }
                    });
                }
                moments
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
                for (m, v) in flat.own.iter_mut().flatten() {
                    device.fill_zero(m)?;
                    device.fill_zero(v)?;
                }
            }
            Some(flat) => {
                let in_layer: Vec<bool> = flat.own.iter().map(Option::is_some).collect();
                let moments = state.moments.clone();
                let (applied, own) = split_moments(&flat.lens, moments, &in_layer)?;
                let (m, v) = flatten_moments(&flat.table.lens().collect::<Vec<_>>(), applied)?;
                device.write(&m, &mut flat.m)?;
                device.write(&v, &mut flat.v)?;
                for (buffers, moments) in flat.own.iter_mut().zip(own) {
                    if let (Some((m, v)), Some((hm, hv))) = (buffers, moments) {
                        device.write(&hm, m)?;
                        device.write(&hv, v)?;
                    }
                }
            }
        }
        self.steps = state.steps;
        Ok(())
    }
}

/// Each parameter's moments (checked against `lens`) split into those [`Adam::apply`] steps, in
/// order, and per parameter those its layer steps (`in_layer`).
#[allow(clippy::type_complexity)]
fn split_moments(
    lens: &[usize],
    moments: Vec<(Vec<f32>, Vec<f32>)>,
    in_layer: &[bool],
) -> Result<(Vec<(Vec<f32>, Vec<f32>)>, Vec<Option<(Vec<f32>, Vec<f32>)>>)> {
    let fits = moments.len() == lens.len()
        && (moments.iter().zip(lens)).all(|((m, v), &len)| m.len() == len && v.len() == len);
    if !fits {
        let got: Vec<usize> = moments.iter().map(|(m, _)| m.len()).collect();
        return Err(Error::Shape {
            name: "adam".to_string(),
            what: format!("moments of lengths {got:?} for parameters of lengths {lens:?}"),
        });
    }
    let mut applied = Vec::new();
    let mut own = Vec::with_capacity(moments.len());
    for (moments, &in_layer) in moments.into_iter().zip(in_layer) {
        if in_layer {
            own.push(Some(moments));
        } else {
            own.push(None);
            applied.push(moments);
        }
    }
    Ok((applied, own))
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
