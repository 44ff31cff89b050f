//! Softmax cross-entropy, as PyTorch's `nn.CrossEntropyLoss()` (mean over the batch).

use kernels::{Buffer, Device, XentShape};

use crate::{Error, Result, Tensor};

pub struct SoftmaxCrossEntropy {
    device: Device,
    /// The gradient to the logits, allocated by the first call and reused after.
    dlogits: Option<Tensor>,
}

impl SoftmaxCrossEntropy {
    pub fn new(device: &Device) -> Self {
        SoftmaxCrossEntropy {
            device: device.clone(),
            dlogits: None,
        }
    }

    /// The loss and its gradient in one op, over the rows whose label is not
    /// [`kernels::IGNORE_LABEL`] (padding): adds their loss sum to `totals[0]` and their correct
    /// count to `totals[1]`, and returns the gradient of the mean loss over those rows to the
    /// logits, (softmax(logits) − onehot) / rows (padding rows get none).
    ///
    /// Sums rather than a mean, kept on the device: an epoch's totals need one download at its
    /// end, not one per step.
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
