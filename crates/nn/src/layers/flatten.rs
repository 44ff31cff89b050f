//! Flatten `[N, C, H, W]` to `[N, C·H·W]`, as `torch.flatten(x, 1)`.
//!
//! NCHW data is stored one sample after another, so each sample's C·H·W values already lie in
//! a row: flattening only changes the shape. Forward and backward hand out views of the buffers
//! they are given, and no value is copied.

use kernels::Buffer;

use crate::error::expect_shape;
use crate::{Error, Result, TensorView};

#[derive(Default)]
pub struct Flatten {
    /// The shape before flattening, which backward gives back to the gradient.
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
}

impl Flatten {
    pub fn new() -> Flatten {
        Flatten::default()
    }

    /// x `[N, ...]` → the same data as `[N, product of the rest]`.
    pub fn forward<'a>(&'a mut self, x: TensorView<'a>) -> Result<TensorView<'a>> {
        let Some((&batch, sample)) = x.shape.split_first() else {
            return Err(Error::Shape {
                name: "flatten".to_string(),
                what: "input is a scalar, expected [N, ...]".to_string(),
            });
        };
        set_shape(&mut self.input_shape, x.shape);
        set_shape(&mut self.output_shape, &[batch, sample.iter().product()]);
        Ok(TensorView {
            shape: &self.output_shape,
            data: x.data,
        })
    }

    /// `data` (the last forward's input) read under the output's shape again: the input the
    /// next layer's backward needs.
    pub fn output<'a>(&'a self, data: &'a Buffer<f32>) -> TensorView<'a> {
        TensorView {
            shape: &self.output_shape,
            data,
        }
    }

    /// The gradient, read again under the input's shape.
    pub fn backward<'a>(&'a self, dy: TensorView<'a>) -> Result<TensorView<'a>> {
        expect_shape("flatten", "dy", dy.shape, &self.output_shape)?;
        Ok(TensorView {
            shape: &self.input_shape,
            data: dy.data,
        })
    }
}

/// Overwrites `shape` in place, so that steps of one batch size allocate nothing.
fn set_shape(shape: &mut Vec<usize>, new: &[usize]) {
    shape.clear();
    shape.extend_from_slice(new);
}
