//! Training and evaluation. The dataset is uploaded to the device once and every batch is
//! gathered there, so a step sends only its batch's indices from the host; loss and accuracy add
//! up on the device and are read once per pass.

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use kernels::{Device, Precision};
use nn::{Adam, ConvNet, ConvNetConfig, Dataset, Trainer};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::metrics::EpochMetrics;
use crate::mnist::{Split, IMAGE_LEN};
use crate::outputs::{write_run, RunInfo};

/// Reading the running loss for the progress bar waits for the device: only this often.
const PROGRESS_EVERY_STEPS: usize = 50;
/// The test pass needs no gradients, so it takes large batches.
const TEST_BATCH_SIZE: usize = 1000;

/// What `handwritten train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub seed: u64,
    pub device: String,
    /// tf32 or fp32; None picks the device's default.
    pub precision: Option<Precision>,
    /// Run every step's launches one by one instead of replaying a captured graph.
    pub no_graph: bool,
    pub out: PathBuf,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
}

/// What `handwritten eval` was asked to do.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub checkpoint: PathBuf,
    pub data: PathBuf,
    pub device: String,
    pub precision: Option<Precision>,
    pub batch_size: usize,
    pub test_limit: Option<usize>,
}

/// Trains the reference network, printing each epoch's figures and rewriting the run directory
/// after each.
pub fn train(options: &TrainOptions) -> Result<()> {
    let device = open_device(&options.device)?;
    let precision = resolve_precision(&device, options.precision)?;
    let train_set = upload(&device, &Split::train(&options.data, options.train_limit)?)?;
    let test_set = upload(&device, &Split::test(&options.data, options.test_limit)?)?;
    fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;

    let mut net = ConvNet::new(&device, ConvNetConfig::reference(), options.seed)?;
    net.set_precision(precision);
    // A batch larger than the training set would only compute padding.
    let batch_size = options.batch_size.min(train_set.len());
    let mut trainer = Trainer::new(net, Adam::new(options.lr), batch_size, !options.no_graph)?;
    let graph = if trainer.uses_graph() {
        "one graph per step"
    } else {
        "eager"
    };
    println!(
        "training on {} images, testing on {}, device {}, precision {precision}, {graph}, \
         batch {}, lr {}; writing {}",
        train_set.len(),
        test_set.len(),
        device.name(),
        options.batch_size,
        options.lr,
        options.out.display()
    );
    let run = RunInfo {
        device: device.name(),
        precision,
        graph: trainer.uses_graph(),
    };

    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut order: Vec<u32> = (0..train_set.len() as u32).collect();
    let mut history = Vec::with_capacity(options.epochs);
    for epoch in 1..=options.epochs {
        order.shuffle(&mut rng);
        let progress = epoch_progress_bar(epoch, order.len())?;
        let start = Instant::now();
        let (train_loss, train_acc) =
            trainer.train_epoch(&train_set, &order, |trainer, done| {
                progress.set_position(done as u64);
                let step = done.div_ceil(batch_size);
                if step % PROGRESS_EVERY_STEPS == 0 && !progress.is_hidden() {
                    let (loss, _) = trainer.means(done)?;
                    progress.set_message(format!("loss {loss:.4}"));
                }
                Ok(())
            })?;
        let seconds = start.elapsed().as_secs_f64();
        progress.finish_and_clear();
        let (test_loss, test_acc) = trainer.evaluate(&test_set, TEST_BATCH_SIZE)?;

        let metrics = EpochMetrics {
            epoch,
            train_loss,
            train_acc,
            test_loss,
            test_acc,
            seconds,
            images_per_second: order.len() as f64 / seconds,
        };
        println!("epoch {epoch}, train_loss {train_loss:.4}, train_acc {train_acc:.4}");
        println!("test_loss {test_loss:.4} , test_acc {test_acc:.4}");
        println!(
            "seconds {seconds:.1}, images_per_second {:.0}",
            metrics.images_per_second
        );
        history.push(metrics);
        write_run(&options.out, &history, trainer.net(), &run)?;
    }
    Ok(())
}

/// Prints the mean loss and accuracy of a checkpoint over the test images.
pub fn eval(options: &EvalOptions) -> Result<()> {
    let device = open_device(&options.device)?;
    let precision = resolve_precision(&device, options.precision)?;
    let test_set = upload(&device, &Split::test(&options.data, options.test_limit)?)?;
    let mut net = ConvNet::load(&device, &options.checkpoint)?;
    net.set_precision(precision);
    println!("device {}, precision {precision}", device.name());
    let mut trainer = Trainer::new(net, Adam::new(1e-3), 1, false)?;
    let (test_loss, test_acc) = trainer.evaluate(&test_set, options.batch_size)?;
    println!("test_loss {test_loss:.4} test_acc {test_acc:.4}");
    Ok(())
}

fn open_device(name: &str) -> Result<Device> {
    Device::from_name(name).with_context(|| format!("--device {name}"))
}

/// `--precision`, or the device's default: tf32 on the kernels (as PyTorch's for convolutions),
/// fp32 on the cpu device, which has no other.
fn resolve_precision(device: &Device, asked: Option<Precision>) -> Result<Precision> {
    match (device, asked) {
        (Device::Cpu, Some(Precision::Tf32)) => {
            bail!("--precision tf32: the cpu device computes in fp32 only; use --precision fp32 or another device")
        }
        (Device::Cpu, _) => Ok(Precision::Fp32),
        (_, Some(precision)) => Ok(precision),
        (_, None) => Ok(Precision::Tf32),
    }
}

fn epoch_progress_bar(epoch: usize, images: usize) -> Result<ProgressBar> {
    let style = ProgressStyle::with_template(
        "epoch {prefix} {wide_bar} {pos}/{len} images, {rate} images/s, eta {eta} {msg}",
    )?
    .with_key("rate", |state: &ProgressState, out: &mut dyn fmt::Write| {
        let _ = write!(out, "{:.0}", state.per_sec());
    });
    let bar = ProgressBar::new(images as u64).with_style(style);
    bar.set_prefix(epoch.to_string());
    Ok(bar)
}

fn upload(device: &Device, split: &Split) -> Result<Dataset> {
    Ok(Dataset::upload(
        device,
        &split.images,
        &split.labels,
        IMAGE_LEN,
    )?)
}
