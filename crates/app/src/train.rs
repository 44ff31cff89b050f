//! Training and evaluation. The dataset is uploaded to the device once and every batch is
//! gathered there, so a step sends only its batch's indices from the host; loss and accuracy add
//! up on the device and are read once per pass (and, to catch a diverging run, at intervals).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use kernels::{Device, Precision};
use nn::{Adam, ConvNet, ConvNetConfig, Dataset, Trainer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;

use crate::eval_report::ClassReport;
use crate::metrics::EpochMetrics;
use crate::mnist::{Split, CLASSES, IMAGE_LEN, IMAGE_SIDE};
use crate::run_dir::{LockedDir, RunDir};
use crate::signals;
use crate::state::{DataFingerprints, RunOptions, TrainingState, STATE_FILE};

/// Reading the running loss for the progress bar waits for the device: only this often.
const PROGRESS_EVERY_STEPS: usize = 50;
/// The test pass needs no gradients, so it takes large batches.
const TEST_BATCH_SIZE: usize = 1000;

/// How `handwritten train` starts: a new run, or one resumed from its directory.
#[derive(Debug, Clone)]
pub enum TrainStart {
    /// `out` None: a fresh `runs/<UTC date-time>`.
    New {
        options: RunOptions,
        out: Option<PathBuf>,
    },
    /// The run in `dir`, with its own options but for these, when given.
    Resume {
        dir: PathBuf,
        epochs: Option<usize>,
        device: Option<String>,
        precision: Option<Precision>,
        data: Option<PathBuf>,
    },
}

/// What `handwritten eval` was asked to do.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub checkpoint: PathBuf,
    pub data: PathBuf,
    pub device: String,
    /// tf32 or fp32; None picks the device's default.
    pub precision: Option<Precision>,
    pub batch_size: usize,
    pub test_limit: Option<usize>,
    /// Where to draw confusion.png, when given.
    pub out: Option<PathBuf>,
}

/// Training stopped by Ctrl-C (SIGINT or SIGTERM) after finishing a step.
#[derive(Debug)]
pub struct Interrupted {
    pub epoch: usize,
    pub kept_epochs: usize,
    pub dir: PathBuf,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = match self.kept_epochs {
            0 => "no completed epoch yet".to_string(),
            1 => "epoch 1".to_string(),
            n => format!("epochs 1 to {n}"),
        };
        write!(
            f,
            "interrupted in epoch {}; {} keeps {kept}; resume with \
             `handwritten train --resume {}`",
            self.epoch,
            self.dir.display(),
            self.dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// Trains the reference network, printing each epoch's figures and committing the run directory
/// after each. `no_graph` launches every op of a step eagerly instead of replaying its graph.
pub fn train(start: &TrainStart, no_graph: bool) -> Result<()> {
    // From the start: a Ctrl-C while the data loads stops the run after its first step.
    signals::install();
    // The run directory is locked before anything in it is looked at, and held to the end.
    let (run, mut state, resumed) = match start {
        TrainStart::New { options, out } => {
            let run = match out {
                Some(out) => RunDir::create(out)?,
                None => RunDir::create_default(Path::new("runs"))?,
            };
            (run, initial_state(options.clone()), None)
        }
        TrainStart::Resume {
            dir,
            epochs,
            device,
            precision,
            data,
        } => {
            let path = dir.join(STATE_FILE);
            if !path.exists() {
                bail!(
                    "--resume {}: no {STATE_FILE}, so no run to resume there",
                    dir.display()
                );
            }
            let run = RunDir::reopen(dir)?;
            let mut state = TrainingState::load(&path)?;
            let resumed = Resumed {
                dir: dir.clone(),
                state_path: path,
                stored_data: state.options.data.clone(),
                data_given: data.clone(),
                device_given: device.is_some(),
                precision_given: precision.is_some(),
            };
            let o = &mut state.options;
            o.epochs = epochs.unwrap_or(o.epochs);
            o.device = device.clone().unwrap_or_else(|| o.device.clone());
            o.precision = precision.or(o.precision);
            o.data = data.clone().unwrap_or_else(|| o.data.clone());
            if o.epochs < state.epoch {
                bail!(
                    "--epochs {}: {} has already completed {} epochs",
                    o.epochs,
                    dir.display(),
                    state.epoch
                );
            }
            (run, state, Some(resumed))
        }
    };
    // An error names the flag the user gave, or else the state the option came from.
    let name = &state.options.device;
    let device = match &resumed {
        Some(resumed) if !resumed.device_given => {
            open_device_for(name, &resumed.stored("device", name))?
        }
        _ => open_device(name)?,
    };
    let precision = match (&resumed, state.options.precision) {
        (Some(resumed), Some(stored)) if !resumed.precision_given => {
            match device.check_precision(stored) {
                Ok(()) => stored,
                Err(why) => bail!(
                    "{}: {why}; pass --precision fp32 to resume it in fp32",
                    resumed.stored("precision", stored)
                ),
            }
        }
        (_, asked) => resolve_precision(&device, asked)?,
    };
    state.options.precision = Some(precision);
    let options = state.options.clone();
    let train_split = Split::train(&options.data, options.train_limit)?;
    let test_split = Split::test(&options.data, options.test_limit)?;
    let fingerprints = DataFingerprints {
        train: train_split.fingerprint(),
        test: test_split.fingerprint(),
    };
    if let (Some(resumed), Some(recorded)) = (&resumed, &state.fingerprints) {
        resumed.check_data(recorded, &fingerprints)?;
    }
    // A state from before runs recorded their data takes the fingerprints of the data it
    // resumes with.
    state.fingerprints = Some(fingerprints);
    let train_set = upload(&device, &train_split)?;
    let test_set = upload(&device, &test_split)?;
    drop((train_split, test_split));
    let mut net = ConvNet::new(&device, ConvNetConfig::reference(), options.seed)?;
    net.set_precision(precision);
    let mut adam = Adam::new(options.lr);
    if resumed.is_some() {
        for (param, values) in net.params_mut().into_iter().zip(&state.weights) {
            device.write(values, &mut param.value.data)?;
        }
        adam.load_state(&device, &state.adam, &net.params())?;
    }
    // A batch larger than the training set would only compute padding.
    let batch_size = options.batch_size.min(train_set.len());
    if let Some(resumed) = &resumed {
        let steps = state.epoch * train_set.len().div_ceil(batch_size);
        if state.adam.steps as usize != steps {
            bail!(
                "{}: field adam_steps is \"{}\": expected {steps}, the steps of {} epochs over \
                 {} training images in batches of {batch_size}",
                resumed.state_path.display(),
                state.adam.steps,
                state.epoch,
                train_set.len()
            );
        }
    }
    let mut trainer = Trainer::new(net, adam, batch_size, !no_graph)?;
    // The shuffles are replayed from the seed; the saved position checks that the replay is the
    // run's own (the same training set, the same epochs).
    let mut rng = ChaCha12Rng::seed_from_u64(options.seed);
    let mut order: Vec<u32> = (0..train_set.len() as u32).collect();
    for _ in 0..state.epoch {
        order.shuffle(&mut rng);
    }
    if rng.get_word_pos() != state.rng_word_pos {
        bail!(
            "{}: field rng_word_pos: its shuffles do not replay on the {} training images in {}: \
             the run trained on other data",
            run.state_path().display(),
            order.len(),
            options.data.display()
        );
    }
    if resumed.is_none() {
        // Epoch 0 committed: from here on the run can be resumed, whenever it stops.
        run.commit(
            &state_of(&state, 0, &rng, &trainer, &state.history)?,
            trainer.net(),
        )?;
    } else {
        run.write_derived(&state.history, trainer.net())?;
    }
    // From here the directory holds a run to resume.
    signals::set_second_stop_note(format!(
        "interrupted again: stopped at once, without finishing the step; {0} keeps the epochs \
         it completed; resume with `handwritten train --resume {0}`\n",
        run.path.display()
    ));
    if resumed.is_some() && state.epoch == options.epochs {
        println!(
            "{} already completed {} of {} epochs; nothing to train (pass --epochs N to train \
             further)",
            run.path.display(),
            state.epoch,
            options.epochs
        );
        return Ok(());
    }
    println!(
        "training on {} images, testing on {}, device {}, precision {precision}, {}, batch {}, \
         lr {}; {} {}",
        train_set.len(),
        test_set.len(),
        device.describe(),
        if trainer.uses_graph() {
            "one graph per step"
        } else {
            "eager"
        },
        options.batch_size,
        options.lr,
        if resumed.is_some() {
            "resuming"
        } else {
            "writing"
        },
        run.path.display()
    );

    // --lr cannot be given to a resume: a diverging resumed run needs a new one.
    let lr_hint = match &resumed {
        None => "try a smaller --lr".to_string(),
        Some(_) => format!("try a new run with an --lr below the run's {}", options.lr),
    };
    let mut history = state.history.clone();
    for epoch in state.epoch + 1..=options.epochs {
        order.shuffle(&mut rng);
        let progress = epoch_progress_bar(epoch, order.len())?;
        let start = Instant::now();
        let pass = train_epoch(&mut trainer, &train_set, &order, &progress);
        progress.finish_and_clear();
        let (train_loss, train_acc) =
            pass.map_err(|stop| stop.into_error(epoch, &run.path, &lr_hint))?;
        let seconds = start.elapsed().as_secs_f64();
        let (test_loss, test_acc) = trainer.evaluate(&test_set, TEST_BATCH_SIZE)?;
        if !test_loss.is_finite() {
            bail!(
                "epoch {epoch}: the test loss is {test_loss}: the weights are no longer finite; \
                 {} keeps epoch {}; {lr_hint}",
                run.path.display(),
                epoch - 1
            );
        }
        let metrics = EpochMetrics {
            epoch,
            train_loss,
            train_acc,
            test_loss,
            test_acc,
            seconds,
            images_per_second: order.len() as f64 / seconds,
        };
        history.push(metrics);
        run.commit(
            &state_of(&state, epoch, &rng, &trainer, &history)?,
            trainer.net(),
        )?;
        println!("epoch {epoch}, train_loss {train_loss:.6}, train_acc {train_acc:.6}");
        println!("test_loss {test_loss:.6} , test_acc {test_acc:.6}");
        println!(
            "seconds {seconds:.1}, images_per_second {:.0}",
            metrics.images_per_second
        );
        if signals::stop_requested() && epoch < options.epochs {
            return Err(Interrupted {
                epoch: epoch + 1,
                kept_epochs: epoch,
                dir: run.path.clone(),
            }
            .into());
        }
    }
    Ok(())
}

/// Where a resumed run's state came from, and which of its options were given again.
struct Resumed {
    dir: PathBuf,
    state_path: PathBuf,
    /// The data directory the state names.
    stored_data: PathBuf,
    /// `--data`, when given again.
    data_given: Option<PathBuf>,
    device_given: bool,
    precision_given: bool,
}

impl Resumed {
    /// A stored option as a message names it: `the run's device cuda (from DIR/STATE)`.
    fn stored(&self, option: &str, value: impl fmt::Display) -> String {
        format!(
            "the run's {option} {value} (from {})",
            self.state_path.display()
        )
    }

    /// Refuses data other than the run's own: `now` are the fingerprints of the data read.
    fn check_data(&self, recorded: &DataFingerprints, now: &DataFingerprints) -> Result<()> {
        let splits = match (recorded.train == now.train, recorded.test == now.test) {
            (true, true) => return Ok(()),
            (false, true) => "training images and labels",
            (true, false) => "test images and labels",
            (false, false) => "training and test images and labels",
        };
        let (dir, stored) = (self.dir.display(), self.stored_data.display());
        let state = self.state_path.display();
        if let Some(given) = &self.data_given {
            bail!(
                "--data {}: its {splits} are not those {dir} trained on, which were in {stored} \
                 (by the fingerprints in {state}); resume with the run's own data",
                given.display()
            );
        }
        bail!(
            "{stored} (the run's --data, from {state}): its {splits} have changed since {dir} \
             trained on them (their fingerprints differ from the state's)"
        )
    }
}

/// A new run before its first epoch.
fn initial_state(options: RunOptions) -> TrainingState {
    TrainingState {
        epoch: 0,
        options,
        rng_word_pos: 0,
        weights: Vec::new(),
        adam: Default::default(),
        history: Vec::new(),
        fingerprints: None,
    }
}

/// The state after `epoch`: `start`'s options, and the rest as the run now has it.
fn state_of(
    start: &TrainingState,
    epoch: usize,
    rng: &ChaCha12Rng,
    trainer: &Trainer,
    history: &[EpochMetrics],
) -> Result<TrainingState> {
    let net = trainer.net();
    let weights = net
        .params()
        .iter()
        .map(|p| p.value.to_vec(net.device()))
        .collect::<nn::Result<_>>()?;
    Ok(TrainingState {
        epoch,
        options: start.options.clone(),
        rng_word_pos: rng.get_word_pos(),
        weights,
        adam: trainer.adam().state(net.device())?,
        history: history.to_vec(),
        fingerprints: start.fingerprints,
    })
}

/// Prints the test loss and accuracy of a checkpoint, its accuracy per class and its confusion
/// matrix; draws the matrix to `confusion.png` under `--out`.
pub fn eval(options: &EvalOptions) -> Result<()> {
    signals::install_stop_at_once();
    // Locked before any work, as a run directory: a run writing there would be told apart.
    let out = options
        .out
        .as_deref()
        .map(|out| LockedDir::open("--out", out, false))
        .transpose()?;
    let device = open_device(&options.device)?;
    let precision = resolve_precision(&device, options.precision)?;
    let split = Split::test(&options.data, options.test_limit)?;
    let mut net = load_checkpoint(&device, &options.checkpoint)?;
    net.set_precision(precision);
    eprintln!("device {}, precision {precision}", device.describe());
    let test_set = upload(&device, &split)?;
    let mut trainer = Trainer::new(net, Adam::new(1e-3), 1, false)?;
    let (test_loss, test_acc) = trainer.evaluate(&test_set, options.batch_size)?;
    if !test_loss.is_finite() {
        bail!(
            "{}: the test loss is {test_loss}",
            options.checkpoint.display()
        );
    }
    println!("test_loss {test_loss:.6} test_acc {test_acc:.6}");
    let predictions: Vec<u8> = trainer
        .logits(&test_set, options.batch_size)?
        .chunks(CLASSES)
        .map(argmax)
        .collect();
    let report = ClassReport::new(&split.labels, &predictions);
    print!("{report}");
    if let Some(out) = &out {
        let path = out.path.join(crate::eval_report::CONFUSION_PLOT_FILE);
        nn::write_atomically(&path, |temp| report.draw(temp))?;
        out.keep();
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// A checkpoint whose network reads 28x28 images into [`CLASSES`] classes, as the data has.
pub fn load_checkpoint(device: &Device, path: &Path) -> Result<ConvNet> {
    let net = ConvNet::load(device, path)?;
    let config = net.config();
    if config.classes != CLASSES || config.image_size != IMAGE_SIDE {
        bail!(
            "checkpoint {}: its network reads {1}x{1} images into {2} classes, the data has \
             {IMAGE_SIDE}x{IMAGE_SIDE} images in {CLASSES} classes",
            path.display(),
            config.image_size,
            config.classes
        );
    }
    Ok(net)
}

/// Opens `--device NAME`. `auto` takes the GPU where the binary runs on it, else the cpu device,
/// saying on stderr which GPU it found and why it does not use it.
pub fn open_device(name: &str) -> Result<Device> {
    open_device_for(name, &format!("--device {name}"))
}

/// Opens device `name`, which errors call `origin`.
fn open_device_for(name: &str, origin: &str) -> Result<Device> {
    if name == "auto" {
        let (device, note) = Device::auto();
        if let Some(note) = note {
            eprintln!("{note}");
        }
        if device == Device::Cpu {
            // The cpu device as `--device cpu` opens it: HANDWRITTEN_CPU_ISA checked.
            return Device::from_name("cpu").context("--device auto");
        }
        return Ok(device);
    }
    Device::from_name(name).with_context(|| origin.to_string())
}

/// `--precision`, or the device's default: tf32 on GPUs with TF32 tensor cores (as PyTorch's for
/// convolutions), fp32 on older GPUs and on the cpu device, which have no other.
pub fn resolve_precision(device: &Device, asked: Option<Precision>) -> Result<Precision> {
    match asked {
        Some(precision) => match device.check_precision(precision) {
            Ok(()) => Ok(precision),
            Err(why) => bail!("--precision {precision}: {why}; use --precision fp32"),
        },
        None => Ok(device.default_precision()),
    }
}

fn upload(device: &Device, split: &Split) -> Result<Dataset> {
    Ok(Dataset::upload(
        device,
        &split.images,
        &split.labels,
        IMAGE_LEN,
    )?)
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

/// One pass of Adam steps over `data` in the order `order`; returns the mean loss and the
/// accuracy over the pass, or why it stopped early.
fn train_epoch(
    trainer: &mut Trainer,
    data: &Dataset,
    order: &[u32],
    progress: &ProgressBar,
) -> Result<(f64, f64), Stop> {
    trainer.start_pass()?;
    // The loss sum is checked for NaN or infinity after every step where reading it is free
    // (the cpu device); elsewhere a read waits for the device, so only every
    // PROGRESS_EVERY_STEPS steps, and the error names the range of steps.
    let check_every = match trainer.net().device() {
        Device::Cpu => 1,
        _ => PROGRESS_EVERY_STEPS,
    };
    let mut checked_steps = 0;
    let mut done = 0;
    for (step, indices) in (1..).zip(order.chunks(trainer.batch_size())) {
        trainer.step(data, indices)?;
        done += indices.len();
        progress.set_position(done as u64);
        let last = done == order.len();
        if step % check_every == 0 || last {
            let (loss, _) = trainer.means(done)?;
            if !loss.is_finite() {
                return Err(Stop::NonFinite {
                    loss,
                    steps: checked_steps + 1..=step,
                });
            }
            checked_steps = step;
            if step % PROGRESS_EVERY_STEPS == 0 {
                progress.set_message(format!("loss {loss:.4}"));
            }
        }
        if signals::stop_requested() && !last {
            return Err(Stop::Signal);
        }
    }
    Ok(trainer.means(order.len())?)
}

/// The index of the largest value, the first of equals: the class a row of logits predicts.
pub fn argmax(values: &[f32]) -> u8 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u8
}

/// Why an epoch stopped before its end.
enum Stop {
    Signal,
    NonFinite {
        loss: f64,
        steps: std::ops::RangeInclusive<usize>,
    },
    Error(anyhow::Error),
}

impl From<anyhow::Error> for Stop {
    fn from(err: anyhow::Error) -> Self {
        Stop::Error(err)
    }
}

impl From<nn::Error> for Stop {
    fn from(err: nn::Error) -> Self {
        Stop::Error(err.into())
    }
}

impl Stop {
    /// `lr_hint` says what to do when the loss is no longer finite.
    fn into_error(self, epoch: usize, dir: &Path, lr_hint: &str) -> anyhow::Error {
        match self {
            Stop::Signal => Interrupted {
                epoch,
                kept_epochs: epoch - 1,
                dir: dir.to_path_buf(),
            }
            .into(),
            Stop::NonFinite { loss, steps } => {
                let at = if steps.start() == steps.end() {
                    format!("step {}", steps.end())
                } else {
                    format!("steps {} to {}", steps.start(), steps.end())
                };
                anyhow::anyhow!(
                    "the training loss became {loss} in epoch {epoch}, {at}; {} keeps epoch {}; \
                     {lr_hint}",
                    dir.display(),
                    epoch - 1
                )
            }
            Stop::Error(err) => err,
        }
    }
}

/// Each image's class probabilities: `images` holds 28x28 u8 pixels per image, as the dataset.
pub fn classify(net: ConvNet, images: &[u8]) -> Result<Vec<[f32; CLASSES]>> {
    let labels = vec![0; images.len() / IMAGE_LEN];
    let data = Dataset::upload(net.device(), images, &labels, IMAGE_LEN)?;
    let mut trainer = Trainer::new(net, Adam::new(1e-3), 1, false)?;
    let logits = trainer.logits(&data, TEST_BATCH_SIZE)?;
    Ok(logits
        .chunks(CLASSES)
        .map(crate::predict::softmax)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    /// The shuffles use ChaCha12 by name (its stream position can be saved); StdRng, which runs
    /// before this trainer could resume used, is the same generator, so seeds keep their runs.
    #[test]
    fn shuffles_match_std_rng() {
        let (mut a, mut b): (Vec<u32>, Vec<u32>) = ((0..1000).collect(), (0..1000).collect());
        let mut chacha = ChaCha12Rng::seed_from_u64(7);
        let mut std = StdRng::seed_from_u64(7);
        for _ in 0..3 {
            a.shuffle(&mut chacha);
            b.shuffle(&mut std);
        }
        assert_eq!(a, b);
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
    }
}
