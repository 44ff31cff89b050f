//! `handwritten`: train the reference MNIST ConvNet on hand-written kernels, evaluate a
//! checkpoint, or ask it about one's own images, on the command line or on a page to draw on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use app::options::{at_least_one, device, epochs, learning_rate, precision, seed, DEVICES};
use app::predict::{json_error_line, json_line, prepare_file, text_line};
use app::serve::{serve, ServeOptions};
use app::signals::INTERRUPTED_EXIT_CODE;
use app::state::RunOptions;
use app::train::{
    classify, eval, load_checkpoint, open_device, resolve_precision, train, EvalOptions,
    Interrupted, TrainStart,
};
use clap::{Args, Parser, Subcommand};
use kernels::Precision;

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
    /// Print a checkpoint's test loss and accuracy, its accuracy per class and its confusion
    /// matrix.
    Eval(EvalArgs),
    /// Print the class a checkpoint sees in each image (PNG, JPEG, BMP or PGM/PPM).
    Predict(PredictArgs),
    /// Serve a page to draw a digit on and watch every layer, and a JSON API (POST /predict),
    /// until Ctrl-C.
    Serve(ServeArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Continue the run in DIR from its last completed epoch, with its own options.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["batch_size", "lr", "seed", "out", "train_limit", "test_limit"])]
    resume: Option<PathBuf>,
    /// Directory of the four MNIST or Fashion-MNIST IDX files, gzip-compressed or raw
    /// [default: data/mnist].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Passes over the training images; with --resume, the new total [default: 20].
    #[arg(long, value_name = "N", value_parser = epochs)]
    epochs: Option<usize>,
    /// Images per Adam step; an epoch's last batch takes what is left.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = at_least_one)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 0.001, value_parser = learning_rate)]
    lr: f32,
    /// Seeds the initial weights and the shuffles.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = seed)]
    seed: u64,
    /// Where the ops run: cpu, cuda, emulated, or auto, which picks cuda when a GPU is found,
    /// else cpu [default: auto].
    #[arg(long, value_parser = device)]
    device: Option<String>,
    /// How convolutions and linear layers multiply: tf32 (tensor cores) or fp32
    /// [default: tf32 on cuda and emulated, fp32 on cpu, which has only fp32; with --resume, the
    /// run's own].
    #[arg(long, value_name = "P", value_parser = precision)]
    precision: Option<Precision>,
    /// Launch every op of a step one by one instead of replaying the step's captured graph
    /// (for debugging; the cpu device always runs this way). Results are the same bits.
    #[arg(long)]
    no_graph: bool,
    /// Run directory for the training state, checkpoint, metrics and plots; must be empty or
    /// new [default: runs/<UTC date-time>].
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
    /// Where the ops run: cpu, cuda, emulated, or auto, which picks cuda when a GPU is found,
    /// else cpu.
    #[arg(long, default_value = "auto", value_parser = device)]
    device: String,
    /// How convolutions and linear layers multiply: tf32 or fp32 [default: tf32 on cuda and
    /// emulated, fp32 on cpu].
    #[arg(long, value_name = "P", value_parser = precision)]
    precision: Option<Precision>,
    /// Images per forward pass.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = at_least_one)]
    batch_size: usize,
    /// Test on the first N test images only.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    test_limit: Option<usize>,
    /// Also draw the confusion matrix to DIR/confusion.png.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct PredictArgs {
    /// A model.safetensors written by `handwritten train` (or by PyTorch, same names).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Where the ops run; auto picks cuda when a GPU is found, else cpu.
    #[arg(long, default_value = "auto", value_parser = DEVICES)]
    device: String,
    /// How convolutions and linear layers multiply: tf32 or fp32 [default: tf32 on cuda and
    /// emulated, fp32 on cpu].
    #[arg(long, value_name = "P")]
    precision: Option<Precision>,
    /// One JSON object per image instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Images of one digit each: PNG, JPEG, BMP or PGM/PPM, sides up to 16,384 pixels, dark ink
    /// on light paper or light on dark.
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// A model.safetensors written by `handwritten train` (or by PyTorch, same names).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// The address to listen on; 0.0.0.0 opens the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on; 0 lets the system choose (the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Where the ops run; auto picks cuda when a GPU is found, else cpu.
    #[arg(long, default_value = "auto", value_parser = DEVICES)]
    device: String,
    /// Seconds a client has to send a request's headers, and again its body.
    #[arg(long, value_name = "S", default_value_t = 10.0, value_parser = time_limit)]
    time_limit: f64,
}

fn time_limit(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(s) if (0.001..=3600.0).contains(&s) => Ok(s),
        _ => Err("expected seconds from 0.001 to 3600".to_string()),
    }
}

fn train_start(args: TrainArgs) -> TrainStart {
    match args.resume {
        Some(dir) => TrainStart::Resume {
            dir,
            epochs: args.epochs,
            device: args.device,
            precision: args.precision,
            data: args.data,
        },
        None => TrainStart::New {
            options: RunOptions {
                data: args.data.unwrap_or_else(|| PathBuf::from("data/mnist")),
                epochs: args.epochs.unwrap_or(20),
                batch_size: args.batch_size,
                lr: args.lr,
                seed: args.seed,
                device: args.device.unwrap_or_else(|| "auto".to_string()),
                precision: args.precision,
                train_limit: args.train_limit,
                test_limit: args.test_limit,
            },
            out: args.out,
        },
    }
}

/// Predicts every image that can be read and holds a digit; each that cannot gets its own line
/// on stderr (and a JSON object with `--json`), and the command then fails.
fn predict(args: PredictArgs) -> Result<()> {
    let device = open_device(&args.device)?;
    let precision = resolve_precision(&device, args.precision)?;
    let mut net = load_checkpoint(&device, &args.checkpoint)?;
    net.set_precision(precision);
    let prepared: Vec<_> = args.images.iter().map(|path| prepare_file(path)).collect();
    let pixels: Vec<u8> = prepared.iter().flatten().flatten().copied().collect();
    let mut probabilities = if pixels.is_empty() {
        Vec::new()
    } else {
        classify(net, &pixels)?
    }
    .into_iter();
    let mut failed = 0;
    for (path, image) in args.images.iter().zip(&prepared) {
        match (image, args.json) {
            (Ok(_), json) => {
                let probabilities = probabilities.next().expect("one row per prepared image");
                if json {
                    println!("{}", json_line(path, &probabilities));
                } else {
                    println!("{}", text_line(path, &probabilities));
                }
            }
            (Err(problem), json) => {
                failed += 1;
                eprintln!("error: {}: {problem}", path.display());
                if json {
                    println!("{}", json_error_line(path, problem));
                }
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} images could not be predicted",
            args.images.len()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Train(args) => {
            let no_graph = args.no_graph;
            train(&train_start(args), no_graph)
        }
        Command::Eval(args) => eval(&EvalOptions {
            checkpoint: args.checkpoint,
            data: args.data,
            device: args.device,
            precision: args.precision,
            batch_size: args.batch_size,
            test_limit: args.test_limit,
            out: args.out,
        }),
        Command::Predict(args) => predict(args),
        Command::Serve(args) => serve(&ServeOptions {
            checkpoint: args.checkpoint,
            host: args.host,
            port: args.port,
            device: args.device,
            time_limit: Duration::from_secs_f64(args.time_limit),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<Interrupted>() => {
            eprintln!("{err}");
            ExitCode::from(INTERRUPTED_EXIT_CODE)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
