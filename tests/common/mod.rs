//! Helpers shared by the op and kernel tests.

use kernels::Conv2dShape;

/// A convolution shape in one line: batch, channels in and out, height, width, kernel, stride,
/// padding.
#[allow(clippy::too_many_arguments)]
pub const fn conv(
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Conv2dShape {
    Conv2dShape {
        batch,
        in_channels,
        out_channels,
        height,
        width,
        kernel,
        stride,
        padding,
    }
}
