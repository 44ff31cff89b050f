//! Checkpoints: safetensors files with the reference PyTorch model's state_dict names and shapes,
//! so that `model.load_state_dict(safetensors.torch.load_file(path))` reads ours and
//! [`ConvNet::load`] reads one written by `safetensors.torch.save_file(model.state_dict(), path)`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use kernels::Device;
use safetensors::{Dtype, SafeTensors};

use crate::{write_atomically, ConvNet, ConvNetConfig, Error, Result};

impl ConvNet {
    /// Writes every parameter as F32 in PyTorch's layout. The file is written beside `path` and
    /// renamed over it when complete: an interrupted save leaves the old checkpoint, never half
    /// of a new one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self
            .to_safetensors()
            .map_err(|e| checkpoint_error(path, format!("cannot serialise: {e}")))?;
        write_atomically(path, |temp| fs::write(temp, &bytes))
    }

    /// The bytes [`ConvNet::save`] writes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::new();
        for param in self.params() {
            let values = param.value.to_vec(self.device())?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((param.name.as_str(), param.value.shape.clone(), bytes));
        }
        let views = tensors.iter().map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes);
            view.map(|view| (*name, view))
        });
        // safetensors.torch.save_file writes this too; some readers look for it.
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        views
            .collect::<Result<Vec<_>, _>>()
            .and_then(|views| safetensors::serialize(views, Some(metadata)))
            .map_err(|e| Error::Shape {
                name: "checkpoint".to_string(),
                what: e.to_string(),
            })
    }

    /// Reads a checkpoint, taking the network's widths from its tensors' shapes. Every tensor of
    /// the state_dict must be there, F32, of the shape the others imply, finite, and nothing else.
    /// All of it is checked before the network is built, so no allocation is sized by a shape
    /// that the file's own bytes do not back.
    pub fn load(device: &Device, path: &Path) -> Result<Self> {
        let bytes = read_bounded(path).map_err(|what| checkpoint_error(path, what))?;
        ConvNet::load_bytes(device, &bytes, path)
    }

    /// [`ConvNet::load`] from the bytes of a checkpoint file; `path` names it in errors.
    pub fn load_bytes(device: &Device, bytes: &[u8], path: &Path) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| checkpoint_error(path, format!("not a complete safetensors file: {e}")))?;
        let config = infer_config(&file).map_err(|what| checkpoint_error(path, what))?;
        let expected = state_dict_shapes(&config);
        if let Some(extra) = file
            .names()
            .into_iter()
            .find(|n| !expected.iter().any(|(name, _)| name == n))
        {
            let names: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
            let what = format!(
                "unexpected tensor {extra}: a ConvNet has only {}",
                names.join(", ")
            );
            return Err(checkpoint_error(path, what));
        }
        let values = expected
            .iter()
            .map(|(name, shape)| read_f32_tensor(&file, name, shape))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|what| checkpoint_error(path, what))?;
        // Build the network the file describes, then overwrite each parameter with its values.
        let mut net = ConvNet::new(device, config, 0)?;
        for (param, values) in net.params_mut().into_iter().zip(&values) {
            device.write(values, &mut param.value.data)?;
        }
        Ok(net)
    }
}

/// The largest checkpoint read: the reference network's is 13 MB.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

/// The file's bytes, refusing one larger than [`MAX_CHECKPOINT_BYTES`] before reading it.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len > MAX_CHECKPOINT_BYTES {
        return Err(format!(
            "{len} bytes, more than the {MAX_CHECKPOINT_BYTES} a checkpoint may have"
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The bound holds even for a file that grows while it is read.
    file.take(MAX_CHECKPOINT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_CHECKPOINT_BYTES {
        return Err(format!(
            "more than the {MAX_CHECKPOINT_BYTES} bytes a checkpoint may have"
        ));
    }
    Ok(bytes)
}

/// Every parameter's state_dict name and shape for `config`, in state_dict order: what
/// [`ConvNet::new`] builds.
pub fn state_dict_shapes(c: &ConvNetConfig) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("conv2d.0.weight", vec![c.conv1_channels, 1, 3, 3]),
        ("conv2d.0.bias", vec![c.conv1_channels]),
        (
            "conv2d.3.weight",
            vec![c.conv2_channels, c.conv1_channels, 3, 3],
        ),
        ("conv2d.3.bias", vec![c.conv2_channels]),
        ("fc1.weight", vec![c.hidden1, c.flat_features()]),
        ("fc1.bias", vec![c.hidden1]),
        ("fc2.weight", vec![c.hidden2, c.hidden1]),
        ("fc2.bias", vec![c.hidden2]),
        ("fc3.weight", vec![c.classes, c.hidden2]),
        ("fc3.bias", vec![c.classes]),
    ]
}

fn checkpoint_error(path: &Path, what: String) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        what,
    }
}

/// The widths, read from the weights' shapes. Only the dimensions that set a width are read
/// here; the full shapes are checked as each tensor is loaded.
fn infer_config(file: &SafeTensors) -> Result<ConvNetConfig, String> {
    let shape_of = |name: &str, rank: usize| -> Result<Vec<usize>, String> {
        let tensor = file
            .tensor(name)
            .map_err(|_| format!("tensor {name} is missing"))?;
        let shape = tensor.shape();
        if shape.len() != rank || shape.contains(&0) {
            return Err(format!(
                "tensor {name} has shape {shape:?}, expected {rank} positive dimensions"
            ));
        }
        Ok(shape.to_vec())
    };
    let conv1_channels = shape_of("conv2d.0.weight", 4)?[0];
    let conv2_channels = shape_of("conv2d.3.weight", 4)?[0];
    let fc1 = shape_of("fc1.weight", 2)?;
    let (hidden1, flat_features) = (fc1[0], fc1[1]);
    let hidden2 = shape_of("fc2.weight", 2)?[0];
    let classes = shape_of("fc3.weight", 2)?[0];
    // fc1 reads conv2's channels over a (image_size / 4)² grid.
    let side = ((flat_features / conv2_channels) as f64).sqrt().round() as usize;
    if conv2_channels * side * side != flat_features {
        return Err(format!(
            "tensor fc1.weight has {flat_features} input features, expected conv2d.3's \
             {conv2_channels} channels times a square grid"
        ));
    }
    Ok(ConvNetConfig {
        conv1_channels,
        conv2_channels,
        hidden1,
        hidden2,
        classes,
        image_size: 4 * side,
    })
}

/// The values of tensor `name` of a safetensors file (a checkpoint, or the app's training state),
/// which must be F32, of `shape` and finite.
pub fn read_f32_tensor(
    file: &SafeTensors,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, String> {
    let tensor = file
        .tensor(name)
        .map_err(|_| format!("tensor {name} is missing"))?;
    if tensor.dtype() != Dtype::F32 {
        return Err(format!(
            "tensor {name} is {:?}, expected F32",
            tensor.dtype()
        ));
    }
    if tensor.shape() != shape {
        return Err(format!(
            "tensor {name} has shape {:?}, expected {shape:?}",
            tensor.shape()
        ));
    }
    let values: Vec<f32> = tensor
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "tensor {name} holds {} at index {index}: values must be finite",
            values[index]
        ));
    }
    Ok(values)
}
