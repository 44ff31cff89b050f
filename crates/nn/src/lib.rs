//! Layers, loss, optimizer and the reference ConvNet, on top of the ops of the `kernels` crate.
//!
//! - [`Tensor`], [`TensorView`], [`Param`]: shapes over device buffers.
//! - [`layers`]: Conv2d, MaxPool2dRelu, Flatten, Linear, each a forward and a backward that
//!   call one op of [`kernels::Device`] apiece.
//! - [`SoftmaxCrossEntropy`] and [`Adam`]: the loss and the optimizer, as PyTorch's.
//! - [`ConvNet`]: the reference network, its initialisation and its safetensors checkpoints;
//!   [`ConvNet::forward_traced`] keeps each layer's [`Activations`].
//! - [`Trainer`] and [`Dataset`]: the training step (gather, forward, loss, backward, Adam), run
//!   eagerly or replayed as one captured graph per step, and evaluation.

mod adam;
mod atomic_write;
mod checkpoint;
mod error;
mod init;
pub mod layers;
mod loss;
mod model;
mod param;
mod tensor;
mod trainer;

pub use adam::{Adam, AdamState};
pub use atomic_write::{temp_path, write_atomically, TEMP_PREFIX};
pub use checkpoint::{read_f32_tensor, state_dict_shapes, MAX_CHECKPOINT_BYTES};
pub use error::{Error, Result};
pub use loss::SoftmaxCrossEntropy;
pub use model::{Activations, ConvNet, ConvNetConfig, HostTensor};
pub use param::Param;
pub use tensor::{Tensor, TensorView};
pub use trainer::{normalized_images, Dataset, Trainer};
