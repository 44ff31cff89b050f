//! The layers of the ConvNet, one per file.
//!
//! Every layer owns the buffers it writes (its output and the gradient to its input) and reuses
//! them from step to step; they are reallocated only when the batch size changes. A forward keeps
//! what its backward will need, and each file says what that is and why. Every computation is one
//! op of [`kernels::Device`], so no layer knows which device runs it.

mod conv2d;
mod flatten;
mod linear;
mod maxpool2d_relu;

pub use conv2d::Conv2d;
pub use flatten::Flatten;
pub use linear::{Linear, WeightStep};
pub use maxpool2d_relu::MaxPool2dRelu;
