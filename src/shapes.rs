//! The shapes every op takes: plain numbers, shared by every device.

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
