//! `handwritten`: train the reference MNIST ConvNet on hand-written kernels, or evaluate a
//! checkpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use app::outputs::default_run_dir;
use app::train::{eval, train, EvalOptions, TrainOptions};
use clap::{Args, Parser, Subcommand};
use kernels::Precision;

const DEVICES: [&str; 4] = ["cpu", "cuda", "emulated", "auto"];

#[derive(Parser)]
#[command(name = "handwritten", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the reference network; print and save each epoch's figures, plots and checkpoint.
    Train(TrainArgs),
    /// Print the test loss and accuracy of a checkpoint.
    Eval(EvalArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Directory of the four MNIST or Fashion-MNIST IDX files, gzip-compressed or raw.
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    data: PathBuf,
    /// Passes over the training images.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = at_least_one)]
    epochs: usize,
    /// Images per Adam step; an epoch's last batch takes what is left.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = at_least_one)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 0.001, value_parser = positive)]
    lr: f32,
    /// Seeds the initial weights and the shuffles.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Where the ops run; auto picks cuda when a GPU is found, else cpu.
    #[arg(long, default_value = "auto", value_parser = DEVICES)]
    device: String,
    /// How convolutions and linear layers multiply: tf32 (tensor cores) or fp32
    /// [default: tf32 on cuda and emulated, fp32 on cpu, which has only fp32].
    #[arg(long, value_name = "P")]
    precision: Option<Precision>,
    /// Launch every op of a step one by one instead of replaying the step's captured graph
    /// (for debugging; the cpu device always runs this way).
    #[arg(long)]
    no_graph: bool,
    /// Run directory for metrics.csv, Loss.png, Acc.png and model.safetensors
    /// [default: runs/<UTC date-time>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Train on the first N training images only.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    train_limit: Option<usize>,
    /// Test on the first N test images only.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    test_limit: Option<usize>,
}

#[derive(Args)]
struct EvalArgs {
    /// A model.safetensors written by `handwritten train` (or by PyTorch, same names).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Directory of the MNIST or Fashion-MNIST IDX files, gzip-compressed or raw.
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    data: PathBuf,
    /// Where the ops run; auto picks cuda when a GPU is found, else cpu.
    #[arg(long, default_value = "auto", value_parser = DEVICES)]
    device: String,
    /// How convolutions and linear layers multiply: tf32 or fp32
    /// [default: tf32 on cuda and emulated, fp32 on cpu].
    #[arg(long, value_name = "P")]
    precision: Option<Precision>,
    /// Images per forward pass.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = at_least_one)]
    batch_size: usize,
    /// Test on the first N test images only.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    test_limit: Option<usize>,
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number of at least 1".to_string()),
    }
}

fn positive(value: &str) -> Result<f32, String> {
    match value.parse::<f32>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err("expected a positive number".to_string()),
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Train(args) => train(&TrainOptions {
            data: args.data,
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            seed: args.seed,
            device: args.device,
            precision: args.precision,
            no_graph: args.no_graph,
            out: args.out.unwrap_or_else(default_run_dir),
            train_limit: args.train_limit,
            test_limit: args.test_limit,
        }),
        Command::Eval(args) => eval(&EvalOptions {
            checkpoint: args.checkpoint,
            data: args.data,
            device: args.device,
            precision: args.precision,
            batch_size: args.batch_size,
            test_limit: args.test_limit,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
