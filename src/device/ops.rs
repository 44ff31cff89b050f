//! Every op of the network on a [`Device`]: each checks its shape and its buffers (their lengths,
//! and that they live on this device), then runs the fast Rust op on the cpu device or hands its
//! launches (see [`crate::launch`]) to the executor of the others.

use super::{check, u32_len, Buffer, Device};
use crate::launch;
use crate::{
    cpu, Activation, AdamHyper, Conv2dShape, Error, LinearShape, Pool2dShape, Precision, Result,
    XentShape, PAD_INDEX,
};

impl Device {
    /// The cpu device and GPUs older than 8.0 multiply in fp32 only: a request for TF32 is a
    /// mistake to report, not to quietly compute more exactly.
    fn check_op_precision(&self, op: &'static str, precision: Precision) -> Result<()> {
        self.check_precision(precision)
            .map_err(|why| Error::Device {
                device: self.name().to_string(),
                what: format!("{op}: {why} (asked for {precision})"),
            })
    }

    pub fn conv2d_forward(
        &self,
        s: &Conv2dShape,
        precision: Precision,
        x: &Buffer<f32>,
        w: &Buffer<f32>,
        b: &Buffer<f32>,
        y: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "conv2d_forward";
        s.check(op)?;
        self.check_op_precision(op, precision)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "weight", w, s.weight_len())?;
        self.expect(op, "bias", b, s.out_channels)?;
        self.expect(op, "y", y, s.output_len())?;
        match self {
            Device::Cpu => cpu::conv2d_forward(s, x.host()?, w.host()?, b.host()?, y.host_mut()?),
            Device::Emulated(_) | Device::Cuda(_) => self.run(launch::conv2d::forward(
                s,
                precision,
                x.arg(),
                w.arg(),
                b.arg(),
                y.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn conv2d_backward_input(
        &self,
        s: &Conv2dShape,
        precision: Precision,
        w: &Buffer<f32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "conv2d_backward_input";
        s.check(op)?;
        self.check_op_precision(op, precision)?;
        self.expect(op, "weight", w, s.weight_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "dx", dx, s.input_len())?;
        match self {
            Device::Cpu => cpu::conv2d_backward_input(s, w.host()?, dy.host()?, dx.host_mut()?),
            Device::Emulated(_) | Device::Cuda(_) => self.run(launch::conv2d::backward_input(
                s,
                precision,
                w.arg(),
                dy.arg(),
                dx.arg_mut(),
            ))?,
        }
        Ok(())
    }

    pub fn conv2d_backward_weight(
        &self,
        s: &Conv2dShape,
        precision: Precision,
        x: &Buffer<f32>,
        dy: &Buffer<f32>,
        dw: &mut Buffer<f32>,
        db: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "conv2d_backward_weight";
        s.check(op)?;
        self.check_op_precision(op, precision)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "dweight", dw, s.weight_len())?;
        self.expect(op, "dbias", db, s.out_channels)?;
        match self {
            Device::Cpu => cpu::conv2d_backward_weight(
                s,
                x.host()?,
                dy.host()?,
                dw.host_mut()?,
                db.host_mut()?,
            ),
            Device::Emulated(_) | Device::Cuda(_) => self.run_gemm(|ctx| {
                launch::conv2d::backward_weight(
                    s,
                    precision,
                    ctx,
                    x.arg(),
                    dy.arg(),
                    dw.arg_mut(),
                    db.arg_mut(),
                )
            })?,
        }
        Ok(())
    }

    /// y = relu(maxpool2d(x)) and the pool's argmax, in one pass (ReLU is monotone, so it
    /// commutes with the max: this is also maxpool of relu).
    pub fn maxpool2d_relu_forward(
        &self,
        s: &Pool2dShape,
        x: &Buffer<f32>,
        y: &mut Buffer<f32>,
        argmax: &mut Buffer<u32>,
    ) -> Result<()> {
        let op = "maxpool2d_relu_forward";
        s.check(op)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "y", y, s.output_len())?;
        self.expect(op, "argmax", argmax, s.output_len())?;
        match self {
            Device::Cpu => {
                cpu::maxpool2d_relu_forward(s, x.host()?, y.host_mut()?, argmax.host_mut()?)
            }
            Device::Emulated(_) | Device::Cuda(_) => self.run(launch::maxpool::relu_forward(
                s,
                x.arg(),
                y.arg_mut(),
                argmax.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// The gradient of [`Device::maxpool2d_relu_forward`]: dy goes to each window's argmax where
    /// the output y is positive; every other dx is 0.
    pub fn maxpool2d_relu_backward(
        &self,
        s: &Pool2dShape,
        argmax: &Buffer<u32>,
        y: &Buffer<f32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "maxpool2d_relu_backward";
        s.check(op)?;
        self.expect(op, "argmax", argmax, s.output_len())?;
        self.expect(op, "y", y, s.output_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "dx", dx, s.input_len())?;
        match self {
            Device::Cpu => cpu::maxpool2d_relu_backward(
                s,
                argmax.host()?,
                y.host()?,
                dy.host()?,
                dx.host_mut()?,
            ),
            Device::Emulated(_) | Device::Cuda(_) => self.run(launch::maxpool::relu_backward(
                s,
                argmax.arg(),
                y.arg(),
                dy.arg(),
                dx.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// [`Device::conv2d_forward`], then [`Device::maxpool2d_relu_forward`] on its output, as one
    /// op: y = relu(maxpool(w ∗ x + b)), argmax indexing the convolution's output `conv_out`.
    /// The kernels run the two ops through `conv_out`; the cpu device pools each image's
    /// convolution while it is still in cache and leaves `conv_out` unwritten where it can
    /// (its contents after the call are unspecified).
    #[allow(clippy::too_many_arguments)] // the op's operands, each checked and named
    pub fn conv2d_maxpool2d_relu_forward(
        &self,
        s: &Conv2dShape,
        precision: Precision,
        x: &Buffer<f32>,
        w: &Buffer<f32>,
        b: &Buffer<f32>,
        conv_out: &mut Buffer<f32>,
        y: &mut Buffer<f32>,
        argmax: &mut Buffer<u32>,
    ) -> Result<()> {
        let op = "conv2d_maxpool2d_relu_forward";
        let p = s.pool2x2();
        s.check(op)?;
        p.check(op)?;
        self.check_op_precision(op, precision)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "weight", w, s.weight_len())?;
        self.expect(op, "bias", b, s.out_channels)?;
        self.expect(op, "conv_out", conv_out, s.output_len())?;
        self.expect(op, "y", y, p.output_len())?;
        self.expect(op, "argmax", argmax, p.output_len())?;
        match self {
            Device::Cpu => cpu::conv2d_maxpool2d_relu_forward(
                s,
                x.host()?,
                w.host()?,
                b.host()?,
                conv_out.host_mut()?,
                y.host_mut()?,
                argmax.host_mut()?,
            ),
            Device::Emulated(_) | Device::Cuda(_) => {
                self.conv2d_forward(s, precision, x, w, b, conv_out)?;
                self.maxpool2d_relu_forward(&p, conv_out, y, argmax)?;
            }
        }
        Ok(())
    }

    /// The gradients of [`Device::conv2d_maxpool2d_relu_forward`]: dw and db, and dx where asked
    /// for (a first layer, whose input is data, needs none). `dconv` is the gradient to the
    /// convolution's output, through which the kernels run the pool's backward and the
    /// convolution's; the cpu device rebuilds it image by image in cache where it can, leaving
    /// `dconv` unwritten (its contents after the call are unspecified).
    #[allow(clippy::too_many_arguments)] // the op's operands, each checked and named
    pub fn maxpool2d_relu_conv2d_backward(
        &self,
        s: &Conv2dShape,
        precision: Precision,
        x: &Buffer<f32>,
        w: &Buffer<f32>,
        argmax: &Buffer<u32>,
        y: &Buffer<f32>,
        dy: &Buffer<f32>,
        dconv: &mut Buffer<f32>,
        dx: Option<&mut Buffer<f32>>,
        dw: &mut Buffer<f32>,
        db: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "maxpool2d_relu_conv2d_backward";
        let p = s.pool2x2();
        s.check(op)?;
        p.check(op)?;
        self.check_op_precision(op, precision)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "weight", w, s.weight_len())?;
        self.expect(op, "argmax", argmax, p.output_len())?;
        self.expect(op, "y", y, p.output_len())?;
        self.expect(op, "dy", dy, p.output_len())?;
        self.expect(op, "dconv", dconv, s.output_len())?;
        if let Some(dx) = &dx {
            self.expect(op, "dx", dx, s.input_len())?;
        }
        self.expect(op, "dweight", dw, s.weight_len())?;
        self.expect(op, "dbias", db, s.out_channels)?;
        match self {
            Device::Cpu => cpu::maxpool2d_relu_conv2d_backward(
                s,
                (x.host()?, w.host()?),
                (argmax.host()?, y.host()?, dy.host()?),
                dconv.host_mut()?,
                match dx {
                    Some(dx) => Some(dx.host_mut()?),
                    None => None,
                },
                dw.host_mut()?,
                db.host_mut()?,
            ),
            Device::Emulated(_) | Device::Cuda(_) => {
                self.maxpool2d_relu_backward(&p, argmax, y, dy, dconv)?;
                self.conv2d_backward_weight(s, precision, x, dconv, dw, db)?;
                if let Some(dx) = dx {
                    self.conv2d_backward_input(s, precision, w, dconv, dx)?;
                }
            }
        }
        Ok(())
    }

    /// dx = dy where the ReLU's output y > 0, else 0: the backward of a [`Device::linear_forward`]
    /// with [`Activation::Relu`] (whose forward is fused into the product; this pass is not).
    pub fn relu_backward(
        &self,
        y: &Buffer<f32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        self.expect("relu_backward", "y", y, y.len())?;
        self.expect("relu_backward", "dy", dy, y.len())?;
        self.expect("relu_backward", "dx", dx, y.len())?;
        match self {
            Device::Cpu => cpu::relu_backward(y.host()?, dy.host()?, dx.host_mut()?),
            Device::Emulated(_) | Device::Cuda(_) => self.run(launch::relu::backward(
                y.len(),
                y.arg(),
                dy.arg(),
                dx.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// y = activation(x·Wᵀ + b).
    #[allow(clippy::too_many_arguments)] // the op's operands, each checked and named
    pub fn linear_forward(
        &self,
        s: &LinearShape,
        precision: Precision,
        activation: Activation,
        x: &Buffer<f32>,
        w: &Buffer<f32>,
        b: &Buffer<f32>,
        y: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "linear_forward";
        s.check(op)?;
        self.check_op_precision(op, precision)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "weight", w, s.weight_len())?;
        self.expect(op, "bias", b, s.out_features)?;
        self.expect(op, "y", y, s.output_len())?;
        match self {
            Device::Cpu => {
                let (x, w, b, y) = (x.host()?, w.host()?, b.host()?, y.host_mut()?);
                match activation {
                    Activation::None => cpu::linear_forward(s, x, w, b, y),
                    // The ReLU in the GEMM's epilogue, as the kernels apply it.
                    Activation::Relu => cpu::linear_relu_forward(s, x, w, b, y),
                }
            }
            Device::Emulated(_) | Device::Cuda(_) => self.run_gemm(|ctx| {
                launch::linear::forward(
                    s,
                    precision,
                    activation,
                    ctx,
                    x.arg(),
                    w.arg(),
                    b.arg(),
                    y.arg_mut(),
                )
            })?,
        }
        Ok(())
    }

    pub fn linear_backward_input(
        &self,
        s: &LinearShape,
        precision: Precision,
        w: &Buffer<f32>,
        dy: &Buffer<f32>,
        dx: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "linear_backward_input";
        s.check(op)?;
        self.check_op_precision(op, precision)?;
        self.expect(op, "weight", w, s.weight_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "dx", dx, s.input_len())?;
        match self {
            Device::Cpu => cpu::linear_backward_input(s, w.host()?, dy.host()?, dx.host_mut()?),
            Device::Emulated(_) | Device::Cuda(_) => self.run_gemm(|ctx| {
                launch::linear::backward_input(s, precision, ctx, w.arg(), dy.arg(), dx.arg_mut())
            })?,
        }
        Ok(())
    }

    pub fn linear_backward_weight(
        &self,
        s: &LinearShape,
        precision: Precision,
        x: &Buffer<f32>,
        dy: &Buffer<f32>,
        dw: &mut Buffer<f32>,
        db: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "linear_backward_weight";
        s.check(op)?;
        self.check_op_precision(op, precision)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "dweight", dw, s.weight_len())?;
        self.expect(op, "dbias", db, s.out_features)?;
        match self {
            Device::Cpu => cpu::linear_backward_weight(
                s,
                x.host()?,
                dy.host()?,
                dw.host_mut()?,
                db.host_mut()?,
            ),
            Device::Emulated(_) | Device::Cuda(_) => self.run_gemm(|ctx| {
                launch::linear::backward_weight(
                    s,
                    precision,
                    ctx,
                    x.arg(),
                    dy.arg(),
                    dw.arg_mut(),
                    db.arg_mut(),
                )
            })?,
        }
        Ok(())
    }

    /// Whether [`Device::linear_backward_weight_adam`] runs here: on the cpu device, where
    /// Adam's pass over a large weight is a pass over memory that fusing it saves. (A GPU's
    /// Adam is already one launch over every tensor, inside the step's graph.)
    pub fn fuses_weight_updates(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// [`Device::linear_backward_weight`], then Adam's step on the weight alone, in one op that
    /// never stores the weight gradient: W and its moments m and v (the tensor's own, `[out,
    /// in]`) are updated, and db is written for the bias's own step. `scalars` are the step's
    /// [`crate::AdamStep::scalars`]. The same bits as the two ops. Only where
    /// [`Device::fuses_weight_updates`]; elsewhere an error.
    #[allow(clippy::too_many_arguments)] // the op's operands, and Adam's
    pub fn linear_backward_weight_adam(
        &self,
        s: &LinearShape,
        precision: Precision,
        x: &Buffer<f32>,
        dy: &Buffer<f32>,
        (hyper, scalars): (&AdamHyper, &Buffer<f32>),
        (w, m, v): (&mut Buffer<f32>, &mut Buffer<f32>, &mut Buffer<f32>),
        db: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "linear_backward_weight_adam";
        s.check(op)?;
        self.check_op_precision(op, precision)?;
        self.expect(op, "x", x, s.input_len())?;
        self.expect(op, "dy", dy, s.output_len())?;
        self.expect(op, "weight", w, s.weight_len())?;
        self.expect(op, "m", m, s.weight_len())?;
        self.expect(op, "v", v, s.weight_len())?;
        self.expect(op, "dbias", db, s.out_features)?;
        self.expect(op, "scalars", scalars, 2)?;
        match self {
            Device::Cpu => {
                let scalars = scalars.host()?;
                cpu::linear_backward_weight_adam(
                    s,
                    x.host()?,
                    dy.host()?,
                    (hyper, [scalars[0], scalars[1]]),
                    (w.host_mut()?, m.host_mut()?, v.host_mut()?),
                    db.host_mut()?,
                );
                Ok(())
            }
            Device::Emulated(_) | Device::Cuda(_) => Err(Error::Device {
                device: self.name().to_string(),
                what: format!("{op}: runs on the cpu device only (see fuses_weight_updates)"),
            }),
        }
    }

    /// The loss forward and backward in one op, over the rows whose label is not
    /// [`IGNORE_LABEL`](crate::IGNORE_LABEL) (padding): adds their loss sum to `totals[0]` and
    /// their correct count to `totals[1]`, and writes dlogits = (softmax − onehot) / rows for
    /// them (rows: how many there are), 0 for padding rows.
    pub fn softmax_xent_fused(
        &self,
        s: &XentShape,
        logits: &Buffer<f32>,
        labels: &Buffer<u32>,
        totals: &mut Buffer<f32>,
        dlogits: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "softmax_xent_fused";
        s.check(op)?;
        self.expect(op, "logits", logits, s.logits_len())?;
        self.expect(op, "labels", labels, s.batch)?;
        self.expect(op, "totals", totals, 2)?;
        self.expect(op, "dlogits", dlogits, s.logits_len())?;
        match self {
            Device::Cpu => {
                let real = labels.host()?.iter().filter(|&&l| l != crate::IGNORE_LABEL);
                check_labels(op, real, s.classes)?;
                cpu::softmax_xent_fused(
                    s,
                    logits.host()?,
                    labels.host()?,
                    totals.host_mut()?,
                    dlogits.host_mut()?,
                )
            }
            Device::Emulated(_) | Device::Cuda(_) => self.run(launch::softmax_xent::fused(
                s,
                logits.arg(),
                labels.arg(),
                totals.arg_mut(),
                dlogits.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// The table of `params` and their `grads` (pairwise the same lengths) for
    /// [`Device::adam_update_tensors`].
    pub fn tensor_table(
        &self,
        params: &[&Buffer<f32>],
        grads: &[&Buffer<f32>],
    ) -> Result<TensorTable> {
        let op = "tensor_table";
        check(op, "grads", grads.len(), params.len())?;
        let mut tensors = Vec::with_capacity(params.len());
        let mut offsets = vec![0u32];
        for (t, (param, grad)) in params.iter().zip(grads).enumerate() {
            self.expect(op, &format!("params[{t}]"), param, param.len())?;
            self.expect(op, &format!("grads[{t}]"), grad, param.len())?;
            tensors.push((param.address(), grad.address(), param.len()));
            let end = *offsets.last().unwrap_or(&0) as usize + param.len();
            offsets.push(u32_len(op, "the tensors together", end)?);
        }
        let (param_addresses, grad_addresses): (Vec<u64>, Vec<u64>) =
            tensors.iter().map(|&(p, g, _)| (p, g)).unzip();
        Ok(TensorTable {
            params: self.upload(&param_addresses)?,
            grads: self.upload(&grad_addresses)?,
            offsets: self.upload(&offsets)?,
            tensors,
        })
    }

    /// One Adam step over many tensors in one launch: tensor t of `params` (updated from
    /// `grads[t]`) has its moments in `m` and `v` at the offset of the tensors before it.
    /// `scalars` holds the step's [`AdamStep::scalars`](crate::AdamStep::scalars), read from
    /// device memory so that a captured step replays with each step's own values. `table` must
    /// come from [`Device::tensor_table`] of these same buffers.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_update_tensors(
        &self,
        hyper: &AdamHyper,
        scalars: &Buffer<f32>,
        table: &TensorTable,
        params: &mut [&mut Buffer<f32>],
        grads: &[&Buffer<f32>],
        m: &mut Buffer<f32>,
        v: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "adam_update_tensors";
        check(op, "params", params.len(), table.tensors.len())?;
        check(op, "grads", grads.len(), table.tensors.len())?;
        for (t, ((param, grad), &(p, g, len))) in
            params.iter().zip(grads).zip(&table.tensors).enumerate()
        {
            self.expect(op, &format!("params[{t}]"), param, len)?;
            self.expect(op, &format!("grads[{t}]"), grad, len)?;
            if param.address() != p || grad.address() != g {
                return Err(Error::Shape {
                    op,
                    what: format!("tensor {t} is not the one its table was made for"),
                });
            }
        }
        let total = table.total_len();
        self.expect(op, "m", m, total)?;
        self.expect(op, "v", v, total)?;
        self.expect(op, "scalars", scalars, 2)?;
        match self {
            Device::Cpu => {
                let (m, v) = (m.host_mut()?, v.host_mut()?);
                let scalars = scalars.host()?;
                let mut start = 0;
                for (param, grad) in params.iter_mut().zip(grads) {
                    let range = start..start + param.len();
                    start = range.end;
                    cpu::adam_update(
                        hyper,
                        [scalars[0], scalars[1]],
                        param.host_mut()?,
                        grad.host()?,
                        &mut m[range.clone()],
                        &mut v[range],
                    );
                }
            }
            Device::Emulated(_) | Device::Cuda(_) => self.run(launch::adam::update_tensors(
                hyper,
                total,
                table.tensors.len(),
                table.params.arg(),
                table.grads.arg(),
                table.offsets.arg(),
                m.arg_mut(),
                v.arg_mut(),
                scalars.arg(),
            ))?,
        }
        Ok(())
    }

    /// Gathers and normalises `indices.len()` u8 images of `image_len` pixels each into `out`.
    pub fn gather_images(
        &self,
        images: &Buffer<u8>,
        image_len: usize,
        indices: &Buffer<u32>,
        out: &mut Buffer<f32>,
    ) -> Result<()> {
        let op = "gather_images";
        if image_len == 0 || !images.len().is_multiple_of(image_len) {
            return Err(Error::Shape {
                op,
                what: format!(
                    "images has {} bytes, not a multiple of image_len {image_len}",
                    images.len()
                ),
            });
        }
        let image_count = images.len() / image_len;
        self.expect(op, "images", images, images.len())?;
        self.expect(op, "indices", indices, indices.len())?;
        self.expect(op, "out", out, indices.len() * image_len)?;
        match self {
            Device::Cpu => {
                let indices = indices.host()?;
                check_indices(op, indices, image_count)?;
                cpu::gather_images(images.host()?, image_len, indices, out.host_mut()?)
            }
            Device::Emulated(_) | Device::Cuda(_) => self.run(launch::data::gather_images(
                u32_len(op, "image_len", image_len)?,
                u32_len(op, "images", image_count)?,
                u32_len(op, "out", out.len())? / image_len as u32,
                images.arg(),
                indices.arg(),
                out.arg_mut(),
            ))?,
        }
        Ok(())
    }

    /// `out[i] = labels[indices[i]]`.
    pub fn gather_labels(
        &self,
        labels: &Buffer<u8>,
        indices: &Buffer<u32>,
        out: &mut Buffer<u32>,
    ) -> Result<()> {
        let op = "gather_labels";
        self.expect(op, "labels", labels, labels.len())?;
        self.expect(op, "indices", indices, indices.len())?;
        self.expect(op, "out", out, indices.len())?;
        match self {
            Device::Cpu => {
                let indices = indices.host()?;
                check_indices(op, indices, labels.len())?;
                cpu::gather_labels(labels.host()?, indices, out.host_mut()?)
            }
            Device::Emulated(_) | Device::Cuda(_) => self.run(launch::data::gather_labels(
                u32_len(op, "labels", labels.len())?,
                u32_len(op, "out", out.len())?,
                labels.arg(),
                indices.arg(),
                out.arg_mut(),
            ))?,
        }
        Ok(())
    }
}

/// The parameter and gradient tensors of one multi-tensor Adam launch, as the kernel reads them:
/// their device addresses and where each tensor's moments start in the flat moment buffers.
/// Made once by [`Device::tensor_table`]; [`Device::adam_update_tensors`] checks that the tensors
/// it is handed are still the ones at those addresses.
#[derive(Debug)]
pub struct TensorTable {
    /// (parameter address, gradient address, length) of each tensor, as the host knows them.
    tensors: Vec<(u64, u64, usize)>,
    params: Buffer<u64>,
    grads: Buffer<u64>,
    /// `offsets[t]` = the elements of tensors before t; `offsets[tensors]` = all of them.
    offsets: Buffer<u32>,
}

impl TensorTable {
    /// Parameters over all tensors: the length of the flat moment buffers.
    pub fn total_len(&self) -> usize {
        self.tensors.iter().map(|&(_, _, len)| len).sum()
    }

    /// Each tensor's length, in order.
    pub fn lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.tensors.iter().map(|&(_, _, len)| len)
    }
}

/// On the host an index past the data would panic; the kernels write NaN (or !0 for labels).
/// [`PAD_INDEX`] is a padding row, which both give zeros (or [`crate::IGNORE_LABEL`]).
fn check_indices(op: &'static str, indices: &[u32], count: usize) -> Result<()> {
    match indices
        .iter()
        .find(|&&i| i != PAD_INDEX && i as usize >= count)
    {
        Some(bad) => Err(Error::Shape {
            op,
            what: format!("index {bad} is past the {count} items"),
        }),
        None => Ok(()),
    }
}

/// On the host a label past the classes would index out of bounds; the kernels give a NaN loss,
/// which the trainer stops on.
fn check_labels<'a>(
    op: &'static str,
    mut labels: impl Iterator<Item = &'a u32>,
    classes: usize,
) -> Result<()> {
    match labels.find(|&&l| l as usize >= classes) {
        Some(bad) => Err(Error::Shape {
            op,
            what: format!("label {bad}, expected 0 to {}", classes - 1),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fc() -> LinearShape {
        LinearShape {
            batch: 2,
            in_features: 3,
            out_features: 2,
        }
    }

    #[test]
    fn the_cpu_device_refuses_tf32_by_name() {
        let dev = Device::Cpu;
        let s = fc();
        let (x, w, b) = (
            dev.upload(&[1.0; 6]).unwrap(),
            dev.upload(&[1.0; 6]).unwrap(),
            dev.upload(&[0.0; 2]).unwrap(),
        );
        let mut y = dev.zeros(4).unwrap();
        let error = dev
            .linear_forward(&s, Precision::Tf32, Activation::None, &x, &w, &b, &mut y)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("linear_forward") && error.contains("fp32 only"),
            "{error}"
        );
    }

    #[test]
    fn the_cpu_device_applies_relu_after_the_product() {
        let dev = Device::Cpu;
        let s = fc();
        // y = x·Wᵀ + b: rows of x are (1, 2, 3) and (-1, -2, -3); W's rows (1, 1, 1), (1, 0, 0).
        let x = dev.upload(&[1.0, 2.0, 3.0, -1.0, -2.0, -3.0]).unwrap();
        let w = dev.upload(&[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]).unwrap();
        let b = dev.upload(&[0.5, -2.0]).unwrap();
        let mut y = dev.zeros(4).unwrap();
        for (activation, want) in [
            (Activation::None, [6.5, -1.0, -5.5, -3.0]),
            (Activation::Relu, [6.5, 0.0, 0.0, 0.0]),
        ] {
            dev.linear_forward(&s, Precision::Fp32, activation, &x, &w, &b, &mut y)
                .unwrap();
            assert_eq!(dev.download(&y).unwrap(), want, "{activation:?}");
        }
    }
}
