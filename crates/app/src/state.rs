//! The training-state file: everything `handwritten train --resume` needs to continue a run as if
//! it had never stopped.
//!
//! A safetensors file, `training_state.safetensors`, whose metadata holds the format version, the
//! completed epoch, the shuffle RNG's position, the run's options and its metrics so far, and
//! whose tensors are the weights (`model.NAME`) and Adam's moments (`adam.m.NAME`,
//! `adam.v.NAME`), NAME being the state_dict name. It is the run directory's commit point: an
//! epoch exists once this file holds it, and every other file is derived from it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use kernels::Precision;
use nn::{read_f32_tensor, state_dict_shapes, AdamState, ConvNetConfig, MAX_CHECKPOINT_BYTES};
use safetensors::{Dtype, SafeTensors};

use crate::metrics::{from_csv, to_csv, EpochMetrics};
use crate::mnist::Fingerprint;
use crate::options;

pub const STATE_FILE: &str = "training_state.safetensors";
const FORMAT: &str = "handwritten training state";
const VERSION: u32 = 1;
/// The data's fingerprints; a state without them is from before runs recorded their data.
const TRAIN_SHA256: &str = "train_sha256";
const TEST_SHA256: &str = "test_sha256";
/// Weights and two moments: three networks' worth, and the metadata.
const MAX_STATE_BYTES: u64 = 3 * MAX_CHECKPOINT_BYTES + (1 << 20);

/// The options a run was started with: a resumed run keeps them.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    pub data: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub seed: u64,
    pub device: String,
    /// None until the run starts, then the precision it computes in.
    pub precision: Option<Precision>,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
}

/// The data a run trains and tests on, as [`Split::fingerprint`](crate::mnist::Split)s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DataFingerprints {
    pub train: Fingerprint,
    pub test: Fingerprint,
}

/// A run as of the end of its epoch `epoch` (0: not yet trained).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingState {
    pub epoch: usize,
    pub options: RunOptions,
    /// The shuffle RNG's position, in 32-bit words of its ChaCha stream.
    pub rng_word_pos: u128,
    /// Each parameter's values, in state_dict order.
    pub weights: Vec<Vec<f32>>,
    pub adam: AdamState,
    pub history: Vec<EpochMetrics>,
    /// None in a state written before runs recorded their data, and until the data is read.
    pub fingerprints: Option<DataFingerprints>,
}

impl TrainingState {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let o = &self.options;
        let limit = |l: Option<usize>| l.map_or(String::new(), |l| l.to_string());
        let data = o
            .data
            .to_str()
            .ok_or_else(|| anyhow!("--data {}: not UTF-8", o.data.display()))?;
        let mut metadata: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("version", VERSION.to_string()),
            ("epoch", self.epoch.to_string()),
            ("rng_word_pos", self.rng_word_pos.to_string()),
            ("adam_steps", self.adam.steps.to_string()),
            ("data", data.to_string()),
            ("epochs", o.epochs.to_string()),
            ("batch_size", o.batch_size.to_string()),
            // Display prints the shortest text that parses back to the same f32.
            ("lr", o.lr.to_string()),
            ("seed", o.seed.to_string()),
            ("device", o.device.clone()),
            (
                "precision",
                o.precision.map_or(String::new(), |p| p.to_string()),
            ),
            ("train_limit", limit(o.train_limit)),
            ("test_limit", limit(o.test_limit)),
            ("metrics", to_csv(&self.history)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(data) = &self.fingerprints {
            metadata.insert(TRAIN_SHA256.to_string(), data.train.to_string());
            metadata.insert(TEST_SHA256.to_string(), data.test.to_string());
        }

        let shapes = state_dict_shapes(&ConvNetConfig::reference());
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let bytes = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for ((name, shape), values) in shapes.iter().zip(&self.weights) {
            tensors.push((format!("model.{name}"), shape.clone(), bytes(values)));
        }
        for ((name, shape), (m, v)) in shapes.iter().zip(&self.adam.moments) {
            tensors.push((format!("adam.m.{name}"), shape.clone(), bytes(m)));
            tensors.push((format!("adam.v.{name}"), shape.clone(), bytes(v)));
        }
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|view| (name.as_str(), view))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(safetensors::serialize(views, Some(metadata))?)
    }

    /// Reads `path`, checking every field and every tensor's shape against the reference
    /// network's before anything is sized by them.
    pub fn load(path: &Path) -> Result<TrainingState> {
        let bytes = read_bounded(path)?;
        TrainingState::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<TrainingState> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow!("not a complete safetensors file: {e}"))?;
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow!("not a complete safetensors file: {e}"))?;
        let empty = HashMap::new();
        let meta = header.metadata().as_ref().unwrap_or(&empty);
        let format = field(meta, "format", |v| Ok(v.to_string()))?;
        if format != FORMAT {
            bail!("not a handwritten training state (format \"{format}\")");
        }
        let version: u32 = field(meta, "version", whole)?;
        if version != VERSION {
            bail!("format version {version}, this handwritten reads version {VERSION}");
        }
        let options = RunOptions {
            data: field(meta, "data", |v| match v {
                "" => Err("expected a directory".to_string()),
                v => Ok(PathBuf::from(v)),
            })?,
            epochs: field(meta, "epochs", options::epochs)?,
            batch_size: field(meta, "batch_size", options::at_least_one)?,
            lr: field(meta, "lr", options::learning_rate)?,
            seed: field(meta, "seed", options::seed)?,
            device: field(meta, "device", options::device)?,
            precision: field(meta, "precision", optional(options::precision))?,
            train_limit: field(meta, "train_limit", optional(options::at_least_one))?,
            test_limit: field(meta, "test_limit", optional(options::at_least_one))?,
        };
        let epoch = field(meta, "epoch", |v| match v.parse::<usize>() {
            Ok(epoch) if epoch <= options.epochs => Ok(epoch),
            _ => Err(format!(
                "expected a whole number from 0 to {} (its field epochs)",
                options.epochs
            )),
        })?;
        let csv = meta
            .get("metrics")
            .ok_or_else(|| anyhow!("field metrics is missing"))?;
        // Named by its row: the whole CSV is too long to quote.
        let history = metrics(csv, epoch).map_err(|why| anyhow!("field metrics: {why}"))?;
        let steps: u32 = field(meta, "adam_steps", |v| match v.parse::<u32>() {
            Ok(0) if epoch > 0 => Err(format!("expected at least 1 after {epoch} epochs")),
            Ok(steps) if steps > 0 && epoch == 0 => {
                Err("expected 0 before the first epoch".to_string())
            }
            Ok(steps) => Ok(steps),
            Err(_) => Err("expected a whole number".to_string()),
        })?;
        let rng_word_pos: u128 = field(meta, "rng_word_pos", whole)?;
        let fingerprints = match (meta.get(TRAIN_SHA256), meta.get(TEST_SHA256)) {
            (None, None) => None,
            (Some(_), Some(_)) => Some(DataFingerprints {
                train: field(meta, TRAIN_SHA256, str::parse)?,
                test: field(meta, TEST_SHA256, str::parse)?,
            }),
            (Some(_), None) => bail!("field {TEST_SHA256} is missing"),
            (None, Some(_)) => bail!("field {TRAIN_SHA256} is missing"),
        };

        let shapes = state_dict_shapes(&ConvNetConfig::reference());
        let weights = shapes
            .iter()
            .map(|(name, shape)| read_f32_tensor(&file, &format!("model.{name}"), shape))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let moments = if steps == 0 {
            Vec::new()
        } else {
            shapes
                .iter()
                .map(|(name, shape)| {
                    Ok((
                        read_f32_tensor(&file, &format!("adam.m.{name}"), shape)?,
                        read_f32_tensor(&file, &format!("adam.v.{name}"), shape)?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(anyhow::Error::msg)?
        };
        // Adam divides by the second moment's square root.
        for ((name, _), (_, v)) in shapes.iter().zip(&moments) {
            if let Some(index) = v.iter().position(|&v| v < 0.0) {
                bail!(
                    "tensor adam.v.{name} holds {} at index {index}: a second moment is at least 0",
                    v[index]
                );
            }
        }
        let expected = weights.len() + 2 * moments.len();
        if file.len() != expected {
            bail!("{} tensors, expected {expected}", file.len());
        }
        Ok(TrainingState {
            epoch,
            options,
            rng_word_pos,
            weights,
            adam: AdamState { steps, moments },
            history,
            fingerprints,
        })
    }
}

/// The metadata `key`, read by `check`: for an option, the check of its flag.
fn field<T>(
    meta: &HashMap<String, String>,
    key: &str,
    check: impl Fn(&str) -> Result<T, String>,
) -> Result<T> {
    let value = meta
        .get(key)
        .ok_or_else(|| anyhow!("field {key} is missing"))?;
    check(value).map_err(|why| anyhow!("field {key} is \"{value}\": {why}"))
}

/// `check` for a field that may be empty: an option not given.
fn optional<T>(check: fn(&str) -> Result<T, String>) -> impl Fn(&str) -> Result<Option<T>, String> {
    move |value| match value {
        "" => Ok(None),
        value => check(value).map(Some),
    }
}

fn whole<T: FromStr>(value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| "expected a whole number of at least 0".to_string())
}

/// The metrics CSV of a state at `epoch`: a row per epoch, each figure finite and in range.
fn metrics(csv: &str, epoch: usize) -> Result<Vec<EpochMetrics>, String> {
    let history = from_csv(csv).map_err(|e| e.to_string())?;
    if history.len() != epoch || history.iter().zip(1..).any(|(m, e)| m.epoch != e) {
        return Err(format!(
            "{} rows, expected one for each epoch from 1 to {epoch} (its field epoch)",
            history.len()
        ));
    }
    for m in &history {
        m.check()
            .map_err(|why| format!("epoch {}: {why}", m.epoch))?;
    }
    Ok(history)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        bail!(
            "{}: more than the {MAX_STATE_BYTES} bytes a training state may have",
            path.display()
        );
    }
    Ok(bytes)
}
