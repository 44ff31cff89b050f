//! handwritten's trainer: MNIST files, the training loop, metrics, plots, the run directory and
//! its training state, Ctrl-C, predictions on one's own images and the page that serves them.
//! The binary (`src/main.rs`) is only the command line over these.

pub mod eval_report;
pub mod metrics;
pub mod mnist;
pub mod options;
pub mod plot;
pub mod predict;
pub mod run_dir;
pub mod serve;
pub mod signals;
pub mod state;
pub mod train;
