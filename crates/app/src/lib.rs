//! handwritten's trainer: MNIST files, the training loop, metrics, plots and the run directory.
//! The binary (`src/main.rs`) is only the command line over these.

pub mod metrics;
pub mod mnist;
pub mod outputs;
pub mod plot;
pub mod train;
