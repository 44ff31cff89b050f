//! The shapes every op takes: plain numbers, shared by every device. Each op checks its shape
//! first: an impossible one is an error naming the op, never a panic or an out-of-bounds launch.

use crate::error::{Error, Result};

/// The kernels index with 32-bit ints and the launches size grids from them: no operand may have
/// more elements than this.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// The product of `dims`, or an error naming `op` when it overflows or passes [`MAX_ELEMENTS`].
fn elements(op: &'static str, operand: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| Error::Shape {
            op,
            what: format!("{operand} of shape {dims:?} has more than {MAX_ELEMENTS} elements"),
        })
}

fn refuse(op: &'static str, what: String) -> Result<()> {
    Err(Error::Shape { op, what })
}

/// A 2-D convolution over NCHW input, square kernel, same stride and padding on both axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2dShape {
    /// The 2x2 max-pool over this convolution's output.
    pub fn pool2x2(&self) -> Pool2dShape {
        Pool2dShape {
            batch: self.batch,
            channels: self.out_channels,
            height: self.out_height(),
            width: self.out_width(),
        }
    }

    /// Stride and kernel at least 1, the kernel within the padded input, every operand within
    /// [`MAX_ELEMENTS`].
    pub fn check(&self, op: &'static str) -> Result<()> {
        if self.stride == 0 || self.kernel == 0 {
            return refuse(
                op,
                format!("{self:?}: stride and kernel must be at least 1"),
            );
        }
        let padded = |side: usize| side.checked_add(self.padding.checked_mul(2)?);
        match (padded(self.height), padded(self.width)) {
            (Some(h), Some(w)) if self.kernel <= h && self.kernel <= w => {}
            _ => return refuse(op, format!("{self:?}: kernel larger than the padded input")),
        }
        let (k, c) = (self.kernel, self.in_channels);
        elements(op, "x", &[self.batch, c, self.height, self.width])?;
        elements(op, "weight", &[self.out_channels, c, k, k])?;
        let out = [
            self.batch,
            self.out_channels,
            self.out_height(),
            self.out_width(),
        ];
        elements(op, "y", &out)?;
        // The GEMM's depth runs over in_channels x kernel x kernel.
        elements(op, "im2col", &[self.batch, c * k * k, out[2], out[3]]).map(drop)
    }
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Elements of x: `[batch, in_channels, height, width]`.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.height * self.width
    }
    /// Elements of the weight: `[out_channels, in_channels, kernel, kernel]`.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel * self.kernel
    }
    /// Elements of y: `[batch, out_channels, out_height, out_width]`.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_height() * self.out_width()
    }
    /// Multiply-adds times two, forward pass.
    pub fn forward_flops(&self) -> u64 {
        2 * (self.output_len() * self.in_channels * self.kernel * self.kernel) as u64
    }
}

/// A 2x2, stride-2 max pool over NCHW input; odd trailing rows/columns are dropped, as in PyTorch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Pool2dShape {
    /// Every operand within [`MAX_ELEMENTS`].
    pub fn check(&self, op: &'static str) -> Result<()> {
        elements(
            op,
            "x",
            &[self.batch, self.channels, self.height, self.width],
        )
        .map(drop)
    }
    pub fn out_height(&self) -> usize {
        self.height / 2
    }
    pub fn out_width(&self) -> usize {
        self.width / 2
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.channels * self.out_height() * self.out_width()
    }
}

/// y = x·Wᵀ + b with x `[batch, in_features]`, W `[out_features, in_features]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub batch: usize,
    pub in_features: usize,
    pub out_features: usize,
}

impl LinearShape {
    /// Every operand within [`MAX_ELEMENTS`].
    pub fn check(&self, op: &'static str) -> Result<()> {
        elements(op, "x", &[self.batch, self.in_features])?;
        elements(op, "weight", &[self.out_features, self.in_features])?;
        elements(op, "y", &[self.batch, self.out_features]).map(drop)
    }
    /// Elements of x: `[batch, in_features]`.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_features
    }
    /// Elements of the weight: `[out_features, in_features]`.
    pub fn weight_len(&self) -> usize {
        self.out_features * self.in_features
    }
    /// Elements of y: `[batch, out_features]`.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_features
    }
    pub fn forward_flops(&self) -> u64 {
        2 * (self.batch * self.in_features * self.out_features) as u64
    }
}

/// Softmax cross-entropy over logits `[batch, classes]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XentShape {
    pub batch: usize,
    pub classes: usize,
}

/// The index of a padding row in a batch's indices: [`Device::gather_images`](crate::Device)
/// gives it zero pixels and [`Device::gather_labels`](crate::Device) the label
/// [`IGNORE_LABEL`], so that an epoch's last, short batch can run at the full batch's shape.
pub const PAD_INDEX: u32 = u32::MAX;
/// The label of a padding row: the fused loss gives it no loss, no count and no gradient.
pub const IGNORE_LABEL: u32 = u32::MAX;

impl XentShape {
    /// At least one class, the logits within [`MAX_ELEMENTS`].
    pub fn check(&self, op: &'static str) -> Result<()> {
        if self.classes == 0 {
            return refuse(op, "logits have no classes".to_string());
        }
        elements(op, "logits", &[self.batch, self.classes]).map(drop)
    }
    /// Elements of the logits and of their gradient: `[batch, classes]`.
    pub fn logits_len(&self) -> usize {
        self.batch * self.classes
    }
}

/// One Adam step with torch.optim.Adam's semantics (no weight decay, no amsgrad).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1-based step count, for the bias corrections.
    pub step: u32,
}

impl AdamStep {
    /// lr / (1 − β1ᵗ): the step size after the first moment's bias correction.
    pub fn step_size(&self) -> f32 {
        (self.lr as f64 / (1.0 - (self.beta1 as f64).powi(self.step as i32))) as f32
    }
    /// √(1 − β2ᵗ): divides √v to undo the second moment's bias.
    pub fn bias_correction2_sqrt(&self) -> f32 {
        (1.0 - (self.beta2 as f64).powi(self.step as i32)).sqrt() as f32
    }

    /// What changes from step to step, as [`crate::Device::adam_update_tensors`] reads it from
    /// device memory: `[step_size, bias_correction2_sqrt]`.
    pub fn scalars(&self) -> [f32; 2] {
        [self.step_size(), self.bias_correction2_sqrt()]
    }

    /// What stays the same from step to step.
    pub fn hyper(&self) -> AdamHyper {
        AdamHyper {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }
}

/// Adam's constants, which a captured step may bake in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

/// How the GEMM-shaped kernels (convolutions and linear layers) multiply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Exact fp32 products and sums: the SIMT engine on the GPU, and all the cpu device does.
    #[default]
    Fp32,
    /// Operands rounded to TF32 (10 mantissa bits) and multiplied on tensor cores, summed in fp32:
    /// the cuda device's default, as PyTorch's for convolutions.
    Tf32,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            other => Err(format!(
                "unknown precision {other:?}: expected tf32 or fp32"
            )),
        }
    }
}

/// The function a GEMM-shaped op applies to each output as it stores it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activation {
    #[default]
    None,
    /// max(y, 0), as `relu_forward` computes it (so −0 and NaN give 0).
    Relu,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    const CONV: Conv2dShape = Conv2dShape {
        batch: 2,
        in_channels: 3,
        out_channels: 4,
        height: 5,
        width: 5,
        kernel: 3,
        stride: 1,
        padding: 1,
    };

    fn refusal(result: Result<()>) -> String {
        result.expect_err("should be refused").to_string()
    }

    #[test]
    fn impossible_convolutions_are_refused() {
        assert!(CONV.check("conv").is_ok());
        let stride0 = Conv2dShape { stride: 0, ..CONV };
        assert!(refusal(stride0.check("conv")).contains("stride"));
        let big_kernel = Conv2dShape { kernel: 8, ..CONV };
        assert!(refusal(big_kernel.check("conv")).contains("kernel larger"));
        // 7 = 5 + 2 x 1 still fits.
        assert!(Conv2dShape { kernel: 7, ..CONV }.check("conv").is_ok());
        let huge = Conv2dShape {
            batch: 1 << 40,
            ..CONV
        };
        assert!(refusal(huge.check("conv")).contains("more than"));
        let overflow = Conv2dShape {
            padding: usize::MAX,
            ..CONV
        };
        assert!(overflow.check("conv").is_err());
    }

    #[test]
    fn oversized_linear_pool_and_softmax_shapes_are_refused() {
        let linear = LinearShape {
            batch: 1 << 20,
            in_features: 1 << 12,
            out_features: 1,
        };
        assert!(refusal(linear.check("linear")).contains("x of shape"));
        let pool = Pool2dShape {
            batch: usize::MAX,
            channels: 2,
            height: 2,
            width: 2,
        };
        assert!(pool.check("pool").is_err());
        assert!(XentShape {
            batch: 4,
            classes: 0
        }
        .check("xent")
        .is_err());
        assert!(XentShape {
            batch: 4,
            classes: 10
        }
        .check("xent")
        .is_ok());
    }

    /// The op returns the error rather than reaching the kernel or the CPU loops.
    #[test]
    fn ops_return_shape_errors() {
        let device = Device::Cpu;
        let s = Conv2dShape { stride: 0, ..CONV };
        let x = device.zeros(s.input_len()).unwrap();
        let w = device.zeros(s.weight_len()).unwrap();
        let b = device.zeros(s.out_channels).unwrap();
        let mut y = device.zeros(1).unwrap();
        let err = device
            .conv2d_forward(&s, Precision::Fp32, &x, &w, &b, &mut y)
            .unwrap_err();
        assert!(err.to_string().starts_with("conv2d_forward: "), "{err}");

        let xent = XentShape {
            batch: 2,
            classes: 3,
        };
        let logits = device.zeros(6).unwrap();
        let labels = device.upload(&[0u32, 3]).unwrap();
        let mut totals = device.zeros(2).unwrap();
        let mut dlogits = device.zeros(6).unwrap();
        let err = device
            .softmax_xent_fused(&xent, &logits, &labels, &mut totals, &mut dlogits)
            .unwrap_err();
        assert!(
            err.to_string().contains("label 3, expected 0 to 2"),
            "{err}"
        );
    }
}
