//! The training step: gather a batch, forward, loss, backward and Adam, with the loss and
//! accuracy summed on the device, run eagerly or as one captured graph per step.
//!
//! On the cuda and emulated devices the step is captured once as a [`Graph`] and replayed: the
//! first step of a shape runs eagerly (it allocates every buffer the step uses, and a capture may
//! not allocate), the second is captured and replayed, and every later one only replays. What
//! changes from step to step cannot be baked into the graph, so it is written to device memory
//! before each replay: the batch's indices into the dataset, and Adam's bias corrections.
//!
//! Every batch has the same shape: an epoch's last, shorter batch is padded to the full size with
//! [`PAD_INDEX`], whose rows the gather fills with zeros and the loss ignores (no loss, no count,
//! no gradient; the mean is over the real rows). So one graph serves the whole epoch and no
//! buffer is reallocated, at the cost of computing the padding rows once per epoch; padding rows
//! add exact zeros to every gradient sum, so the step equals the unpadded one.

use kernels::launch::KernelArg;
use kernels::{Buffer, Device, Graph, PAD_INDEX};

use crate::{Adam, ConvNet, Error, Result, SoftmaxCrossEntropy, Tensor};

/// A split of a dataset on the device, as raw u8 pixels and labels: the gather normalises what
/// it picks, so the whole split crosses the bus once.
pub struct Dataset {
    images: Buffer<u8>,
    labels: Buffer<u8>,
    len: usize,
    /// How many classes the labels need: the largest label plus one (0 when empty). Checked
    /// against the network's classes before a pass, since out on a device a label past the
    /// logits would only show as a NaN loss.
    classes_needed: usize,
}

impl Dataset {
    /// `images` holds `labels.len()` images of `image_len` bytes each.
    pub fn upload(
        device: &Device,
        images: &[u8],
        labels: &[u8],
        image_len: usize,
    ) -> Result<Dataset> {
        if images.len() != labels.len() * image_len {
            return Err(Error::Shape {
                name: "dataset".to_string(),
                what: format!(
                    "{} image bytes for {} labels of {image_len}-pixel images",
                    images.len(),
                    labels.len()
                ),
            });
        }
        Ok(Dataset {
            images: device.upload(images)?,
            labels: device.upload(labels)?,
            len: labels.len(),
            classes_needed: labels.iter().max().map_or(0, |&l| l as usize + 1),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `pixels`, whole `side`x`side` u8 images, as the network reads them: `[N, 1, side, side]`,
/// normalised on the device by the same gather as training's batches.
pub fn normalized_images(device: &Device, pixels: &[u8], side: usize) -> Result<Tensor> {
    let image_len = side * side;
    if image_len == 0 || pixels.is_empty() || !pixels.len().is_multiple_of(image_len) {
        return Err(Error::Shape {
            name: "images".to_string(),
            what: format!(
                "{} bytes, expected a positive multiple of {side}x{side}",
                pixels.len()
            ),
        });
    }
    let count = pixels.len() / image_len;
    let indices: Vec<u32> = (0..count as u32).collect();
    let mut images = Tensor::zeros(device, &[count, 1, side, side])?;
    device.gather_images(
        &device.upload(pixels)?,
        image_len,
        &device.upload(&indices)?,
        &mut images.data,
    )?;
    Ok(images)
}

/// One batch's buffers on the device, reused from step to step.
struct Batch {
    /// The indices written before the step, padded with PAD_INDEX.
    indices: Buffer<u32>,
    host_indices: Vec<u32>,
    images: Tensor,
    labels: Buffer<u32>,
}

impl Batch {
    fn new(device: &Device, size: usize, image_side: usize) -> Result<Batch> {
        Ok(Batch {
            indices: device.zeros(size)?,
            host_indices: vec![PAD_INDEX; size],
            images: Tensor::zeros(device, &[size, 1, image_side, image_side])?,
            labels: device.zeros(size)?,
        })
    }

    fn size(&self) -> usize {
        self.host_indices.len()
    }

    /// Writes `indices`, padded to the batch's size: a host write, outside any graph.
    fn write_indices(&mut self, device: &Device, indices: &[u32]) -> Result<()> {
        if indices.is_empty() || indices.len() > self.size() {
            return Err(Error::Shape {
                name: "trainer".to_string(),
                what: format!(
                    "a step of {} images, expected 1 to {}",
                    indices.len(),
                    self.size()
                ),
            });
        }
        let (real, padding) = self.host_indices.split_at_mut(indices.len());
        real.copy_from_slice(indices);
        padding.fill(PAD_INDEX);
        device.write(&self.host_indices, &mut self.indices)?;
        Ok(())
    }

    /// Gathers the images and labels the indices pick: launches only.
    fn gather(&mut self, device: &Device, data: &Dataset) -> Result<()> {
        let image_len = self.images.data.len() / self.size();
        device.gather_images(
            &data.images,
            image_len,
            &self.indices,
            &mut self.images.data,
        )?;
        device.gather_labels(&data.labels, &self.indices, &mut self.labels)?;
        Ok(())
    }
}

/// A captured step and the dataset it reads: the addresses and lengths of its images and labels,
/// all baked into the graph's gather launches.
struct StepGraph {
    graph: Graph,
    dataset: DatasetKey,
}

#[derive(Clone, Copy, PartialEq, Debug)]
struct DatasetKey {
    images: KernelArg,
    images_len: usize,
    labels: KernelArg,
    labels_len: usize,
}

impl DatasetKey {
    fn of(data: &Dataset) -> DatasetKey {
        DatasetKey {
            images: data.images.arg(),
            images_len: data.images.len(),
            labels: data.labels.arg(),
            labels_len: data.labels.len(),
        }
    }
}

/// The network, its loss and optimizer, and the device buffers a pass over a dataset reuses.
pub struct Trainer {
    device: Device,
    net: ConvNet,
    loss: SoftmaxCrossEntropy,
    adam: Adam,
    batch: Batch,
    /// Evaluation's batch, of its own size.
    eval_batch: Option<Batch>,
    /// The current pass's loss sum and correct count, added up on the device.
    totals: Buffer<f32>,
    use_graph: bool,
    graph: Option<StepGraph>,
    /// Whether a step has run eagerly at the training shape since the buffers last changed:
    /// then every buffer a step uses exists, and the next step may be captured.
    allocated: bool,
}

impl Trainer {
    /// Trains `net` with `adam` in batches of `batch_size`, replaying one captured graph per
    /// step where `use_graph` and the device runs kernels (the cpu device always runs eagerly).
    pub fn new(net: ConvNet, adam: Adam, batch_size: usize, use_graph: bool) -> Result<Trainer> {
        let device = net.device().clone();
        let side = net.config().image_size;
        if batch_size == 0 {
            return Err(Error::Shape {
                name: "trainer".to_string(),
                what: "batch size 0, expected at least 1".to_string(),
            });
        }
        Ok(Trainer {
            loss: SoftmaxCrossEntropy::new(&device),
            batch: Batch::new(&device, batch_size, side)?,
            eval_batch: None,
            totals: device.zeros(2)?,
            use_graph: use_graph && device != Device::Cpu,
            graph: None,
            allocated: false,
            device,
            net,
            adam,
        })
    }

    /// Whether steps replay a captured graph.
    pub fn uses_graph(&self) -> bool {
        self.use_graph
    }

    /// The captured step, once a second step at the training shape has run (on the emulator its
    /// launches can be listed: `examples/step_launches.rs`).
    pub fn step_graph(&self) -> Option<&Graph> {
        self.graph.as_ref().map(|g| &g.graph)
    }

    pub fn net(&self) -> &ConvNet {
        &self.net
    }

    pub fn adam(&self) -> &Adam {
        &self.adam
    }

    pub fn batch_size(&self) -> usize {
        self.batch.size()
    }

    /// Clears the loss and accuracy sums: call at the start of a pass.
    pub fn start_pass(&mut self) -> Result<()> {
        self.device.fill_zero(&mut self.totals)?;
        Ok(())
    }

    /// The sums since [`Trainer::start_pass`] as a mean loss and an accuracy over `images`
    /// images. Waits for the device.
    pub fn means(&self, images: usize) -> Result<(f64, f64)> {
        let totals = self.device.download(&self.totals)?;
        let images = images.max(1) as f64;
        Ok((f64::from(totals[0]) / images, f64::from(totals[1]) / images))
    }

    /// One pass of Adam steps over `data` in the order `order`, calling `after_step` with the
    /// images done so far after each; returns the mean loss and the accuracy over the pass.
    pub fn train_epoch(
        &mut self,
        data: &Dataset,
        order: &[u32],
        mut after_step: impl FnMut(&Trainer, usize) -> Result<()>,
    ) -> Result<(f64, f64)> {
        self.start_pass()?;
        let mut done = 0;
        for indices in order.chunks(self.batch.size()) {
            self.step(data, indices)?;
            done += indices.len();
            after_step(self, done)?;
        }
        self.means(order.len())
    }

    /// One Adam step on the images of `data` at `indices` (at most the batch size; fewer are
    /// padded), its loss and correct count added to the pass's sums.
    pub fn step(&mut self, data: &Dataset, indices: &[u32]) -> Result<()> {
        self.check_labels(data)?;
        // What changes from step to step goes to device memory first, outside any graph.
        self.batch.write_indices(&self.device, indices)?;
        let in_layer = self.net.stepped_in_layer();
        (self.adam).prepare_stepping(&self.device, &self.net.params_mut(), &in_layer)?;
        self.adam.begin_step(&self.device)?;
        if !self.use_graph {
            return self.step_launches(data);
        }
        let dataset = DatasetKey::of(data);
        if self.graph.as_ref().is_some_and(|g| g.dataset != dataset) {
            self.graph = None;
        }
        if self.graph.is_none() {
            if !self.allocated {
                self.step_launches(data)?;
                self.allocated = true;
                return Ok(());
            }
            let device = self.device.clone();
            let graph = device.capture(|| self.step_launches(data))?;
            self.graph = Some(StepGraph { graph, dataset });
        }
        let graph = &self.graph.as_ref().expect("captured above").graph;
        // SAFETY: the graph addresses the dataset (its buffers checked above), the batch, the network's
        // buffers, the loss's gradient, Adam's state and the totals. Each of these is owned by
        // this trainer or by `data`, and none is reallocated while the shapes stay those of the
        // capture: evaluation, the one thing that changes them, drops the graph.
        unsafe { self.device.launch_graph(graph)? };
        Ok(())
    }

    /// Everything a step launches, in order: what a graph captures.
    fn step_launches(&mut self, data: &Dataset) -> Result<()> {
        self.batch.gather(&self.device, data)?;
        let logits = self.net.forward(&self.batch.images)?;
        let dlogits = self
            .loss
            .forward_backward(logits, &self.batch.labels, &mut self.totals)?;
        (self.net).backward_stepping(&self.batch.images, dlogits, &mut self.adam)?;
        self.adam.apply(&self.device, &mut self.net.params_mut())
    }

    /// Mean loss and accuracy over `data`, in batches of `batch_size`, without gradients (the
    /// fused loss writes one, which nothing reads). Always eager.
    pub fn evaluate(&mut self, data: &Dataset, batch_size: usize) -> Result<(f64, f64)> {
        self.check_labels(data)?;
        self.start_pass()?;
        let size = batch_size.min(data.len()).max(1);
        let mut batch = self.take_eval_batch(size)?;
        let order: Vec<u32> = (0..data.len() as u32).collect();
        for indices in order.chunks(size) {
            batch.write_indices(&self.device, indices)?;
            batch.gather(&self.device, data)?;
            let logits = self.net.forward(&batch.images)?;
            self.loss
                .forward_backward(logits, &batch.labels, &mut self.totals)?;
        }
        self.eval_batch = Some(batch);
        self.means(data.len())
    }

    /// The logits of every image of `data`, `[data.len(), classes]`, computed in batches of
    /// `batch_size`. Always eager.
    pub fn logits(&mut self, data: &Dataset, batch_size: usize) -> Result<Vec<f32>> {
        let classes = self.net.config().classes;
        let size = batch_size.min(data.len()).max(1);
        let mut batch = self.take_eval_batch(size)?;
        let mut logits = Vec::with_capacity(data.len() * classes);
        let order: Vec<u32> = (0..data.len() as u32).collect();
        for indices in order.chunks(size) {
            batch.write_indices(&self.device, indices)?;
            batch.gather(&self.device, data)?;
            let rows = self.net.forward(&batch.images)?.to_vec(&self.device)?;
            // A short last batch is padded: only its first rows are images.
            logits.extend_from_slice(&rows[..indices.len() * classes]);
        }
        self.eval_batch = Some(batch);
        Ok(logits)
    }

    /// Refuses a dataset whose labels the network has no class for.
    fn check_labels(&self, data: &Dataset) -> Result<()> {
        let classes = self.net.config().classes;
        if data.classes_needed > classes {
            return Err(Error::Shape {
                name: "dataset".to_string(),
                what: format!(
                    "label {}, but the network has {classes} classes (0 to {})",
                    data.classes_needed - 1,
                    classes - 1
                ),
            });
        }
        Ok(())
    }

    /// Evaluation's batch of `size` images, kept for the next pass when this one ends. The
    /// network's buffers take that batch size, so the step's graph would address freed memory:
    /// it is dropped, and the next step allocates again before it captures.
    fn take_eval_batch(&mut self, size: usize) -> Result<Batch> {
        self.graph = None;
        self.allocated = false;
        match self.eval_batch.take() {
            Some(batch) if batch.size() == size => Ok(batch),
            _ => Batch::new(&self.device, size, self.net.config().image_size),
        }
    }
}
