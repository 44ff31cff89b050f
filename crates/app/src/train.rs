//! Training and evaluation. The dataset is uploaded to the device once and every batch is
//! gathered there, so a step sends only its batch's indices from the host; loss and accuracy add
//! up on the device and are read once per pass.

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use kernels::{Buffer, Device};
use nn::{Adam, ConvNet, ConvNetConfig, SoftmaxCrossEntropy, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::metrics::EpochMetrics;
use crate::mnist::{Split, IMAGE_LEN, IMAGE_SIDE};
use crate::outputs::write_run;

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
    pub batch_size: usize,
    pub test_limit: Option<usize>,
}

/// Trains the reference network, printing each epoch's figures and rewriting the run directory
/// after each.
pub fn train(options: &TrainOptions) -> Result<()> {
    let device = open_device(&options.device)?;
    let train_set =
        DeviceSplit::upload(&device, &Split::train(&options.data, options.train_limit)?)?;
    let test_set = DeviceSplit::upload(&device, &Split::test(&options.data, options.test_limit)?)?;
    fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    println!(
        "training on {} images, testing on {}, device {}, batch {}, lr {}; writing {}",
        train_set.len,
        test_set.len,
        device.name(),
        options.batch_size,
        options.lr,
        options.out.display()
    );

    let net = ConvNet::new(&device, ConvNetConfig::reference(), options.seed)?;
    let mut model = Model::new(device, net)?;
    let mut adam = Adam::new(options.lr);
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut order: Vec<u32> = (0..train_set.len as u32).collect();
    let mut history = Vec::with_capacity(options.epochs);
    for epoch in 1..=options.epochs {
        order.shuffle(&mut rng);
        let progress = epoch_progress_bar(epoch, order.len())?;
        let start = Instant::now();
        let (train_loss, train_acc) =
            model.train_epoch(&mut adam, &train_set, &order, options.batch_size, &progress)?;
        let seconds = start.elapsed().as_secs_f64();
        progress.finish_and_clear();
        let (test_loss, test_acc) = model.evaluate(&test_set, TEST_BATCH_SIZE)?;

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
        write_run(&options.out, &history, &model.net)?;
    }
    Ok(())
}

/// Prints the mean loss and accuracy of a checkpoint over the test images.
pub fn eval(options: &EvalOptions) -> Result<()> {
    let device = open_device(&options.device)?;
    let test_set = DeviceSplit::upload(&device, &Split::test(&options.data, options.test_limit)?)?;
    let net = ConvNet::load(&device, &options.checkpoint)?;
    let mut model = Model::new(device, net)?;
    let (test_loss, test_acc) = model.evaluate(&test_set, options.batch_size)?;
    println!("test_loss {test_loss:.4} test_acc {test_acc:.4}");
    Ok(())
}

fn open_device(name: &str) -> Result<Device> {
    Device::from_name(name).with_context(|| format!("--device {name}"))
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

/// A split on the device, as raw u8 pixels and labels: the gather normalises what it picks.
struct DeviceSplit {
    images: Buffer<u8>,
    labels: Buffer<u8>,
    len: usize,
}

impl DeviceSplit {
    fn upload(device: &Device, split: &Split) -> Result<Self> {
        Ok(DeviceSplit {
            images: device.upload(&split.images)?,
            labels: device.upload(&split.labels)?,
            len: split.len(),
        })
    }
}

/// One batch on the device: its indices into the split and what they pick.
struct Batch {
    indices: Buffer<u32>,
    images: Tensor,
    labels: Buffer<u32>,
}

impl Batch {
    fn new(device: &Device, size: usize) -> Result<Self> {
        Ok(Batch {
            indices: device.zeros(size)?,
            images: Tensor {
                shape: vec![size, 1, IMAGE_SIDE, IMAGE_SIDE],
                data: device.zeros(size * IMAGE_LEN)?,
            },
            labels: device.zeros(size)?,
        })
    }
}

/// Gathers batches into buffers reused from step to step, one set per batch size met: the full
/// batch and the last, partial one.
#[derive(Default)]
struct Batcher {
    batches: Vec<Batch>,
}

impl Batcher {
    fn gather(&mut self, device: &Device, split: &DeviceSplit, indices: &[u32]) -> Result<&Batch> {
        let slot = match self
            .batches
            .iter()
            .position(|b| b.indices.len() == indices.len())
        {
            Some(slot) => slot,
            None => {
                self.batches.push(Batch::new(device, indices.len())?);
                self.batches.len() - 1
            }
        };
        let batch = &mut self.batches[slot];
        device.write(indices, &mut batch.indices)?;
        device.gather_images(
            &split.images,
            IMAGE_LEN,
            &batch.indices,
            &mut batch.images.data,
        )?;
        device.gather_labels(&split.labels, &batch.indices, &mut batch.labels)?;
        Ok(batch)
    }
}

/// The network, its loss, and the device buffers a pass over a split reuses.
struct Model {
    device: Device,
    net: ConvNet,
    loss: SoftmaxCrossEntropy,
    /// The current pass's loss sum and correct count, added up on the device.
    totals: Buffer<f32>,
    batcher: Batcher,
}

impl Model {
    fn new(device: Device, net: ConvNet) -> Result<Self> {
        Ok(Model {
            loss: SoftmaxCrossEntropy::new(&device),
            totals: device.zeros(2)?,
            batcher: Batcher::default(),
            device,
            net,
        })
    }

    /// One pass of Adam steps over `split` in the order `order`; returns the mean loss and the
    /// accuracy over the pass.
    fn train_epoch(
        &mut self,
        adam: &mut Adam,
        split: &DeviceSplit,
        order: &[u32],
        batch_size: usize,
        progress: &ProgressBar,
    ) -> Result<(f64, f64)> {
        self.device.fill_zero(&mut self.totals)?;
        for (step, indices) in order.chunks(batch_size).enumerate() {
            let batch = self.batcher.gather(&self.device, split, indices)?;
            let logits = self.net.forward(&batch.images)?;
            self.loss.forward(logits, &batch.labels, &mut self.totals)?;
            let dlogits = self.loss.backward(logits, &batch.labels)?;
            self.net.backward(dlogits)?;
            adam.step(&self.device, self.net.params_mut())?;

            progress.inc(indices.len() as u64);
            if (step + 1) % PROGRESS_EVERY_STEPS == 0 && !progress.is_hidden() {
                let (loss, _) = self.means(progress.position() as usize)?;
                progress.set_message(format!("loss {loss:.4}"));
            }
        }
        self.means(order.len())
    }

    /// Mean loss and accuracy over `split`, in batches of `batch_size`, without gradients.
    fn evaluate(&mut self, split: &DeviceSplit, batch_size: usize) -> Result<(f64, f64)> {
        self.device.fill_zero(&mut self.totals)?;
        let order: Vec<u32> = (0..split.len as u32).collect();
        for indices in order.chunks(batch_size) {
            let batch = self.batcher.gather(&self.device, split, indices)?;
            let logits = self.net.forward(&batch.images)?;
            self.loss.forward(logits, &batch.labels, &mut self.totals)?;
        }
        self.means(split.len)
    }

    /// The totals so far as a mean loss and an accuracy over `images` images.
    fn means(&self, images: usize) -> Result<(f64, f64)> {
        let totals = self.device.download(&self.totals)?;
        let images = images as f64;
        Ok((f64::from(totals[0]) / images, f64::from(totals[1]) / images))
    }
}
