//! Softmax cross-entropy, as PyTorch's `nn.CrossEntropyLoss()` (mean over the batch).

use kernels::{Buffer, Device, XentShape};

use crate::{Error, Result, Tensor};

pub struct SoftmaxCrossEntropy {
    device: Device,
    /// The gradient to the logits, allocated by the first backward and reused after.
    dlogits: Option<Tensor>,
}

impl SoftmaxCrossEntropy {
    pub fn new(device: &Device) -> Self {
        SoftmaxCrossEntropy {
            device: device.clone(),
            dlogits: None,
        }
    }

    /// Adds the batch's loss sum to `totals[0]` and its correct count to `totals[1]`.
    ///
    /// Sums rather than a mean, kept on the device: an epoch's totals need one download at its
    /// end, not one per step.
    pub fn forward(
        &mut self,
        logits: &Tensor,
        labels: &Buffer<u32>,
        totals: &mut Buffer<f32>,
    ) -> Result<()> {
        let s = xent_shape(logits)?;
        self.device
            .softmax_xent_forward(&s, &logits.data, labels, totals)?;
        Ok(())
    }

    /// [`SoftmaxCrossEntropy::forward`] and [`SoftmaxCrossEntropy::backward`] in one op, over the
    /// rows whose label is not [`kernels::IGNORE_LABEL`] (padding): the gradient is that of the
    /// mean over those rows, and padding rows get none.
    pub fn forward_backward(
        &mut self,
        logits: &Tensor,
        labels: &Buffer<u32>,
        totals: &mut Buffer<f32>,
    ) -> Result<&Tensor> {
        let s = xent_shape(logits)?;
        let dlogits = match &mut self.dlogits {
            Some(dlogits) => dlogits,
            none => none.insert(Tensor::zeros(&self.device, &logits.shape)?),
        };
        dlogits.resize(&self.device, &logits.shape)?;
        self.device
            .softmax_xent_fused(&s, &logits.data, labels, totals, &mut dlogits.data)?;
        Ok(dlogits)
    }

    /// The gradient of the batch's mean loss to the logits: (softmax(logits) − onehot) / N.
    pub fn backward(&mut self, logits: &Tensor, labels: &Buffer<u32>) -> Result<&Tensor> {
        let s = xent_shape(logits)?;
        let dlogits = match &mut self.dlogits {
            Some(dlogits) => dlogits,
            none => none.insert(Tensor::zeros(&self.device, &logits.shape)?),
        };
        dlogits.resize(&self.device, &logits.shape)?;
        self.device
            .softmax_xent_backward(&s, &logits.data, labels, &mut dlogits.data)?;
        Ok(dlogits)
    }
}

fn xent_shape(logits: &Tensor) -> Result<XentShape> {
    match logits.shape[..] {
        [batch, classes] => Ok(XentShape { batch, classes }),
        _ => Err(Error::Shape {
            name: "softmax cross-entropy".to_string(),
            what: format!(
                "logits have shape {:?}, expected [N, classes]",
                logits.shape
            ),
        }),
    }
}
