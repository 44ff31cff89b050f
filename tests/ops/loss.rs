//! Softmax cross-entropy, forward and backward in one op, against the reference over the rows
//! that are not padding.

use kernels::reference as r;
use kernels::{XentShape, IGNORE_LABEL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{assert_close, devices, download, nan_buffer, random, upload, widen};

#[test]
fn softmax_xent_fused_matches_reference_over_the_rows_that_are_not_padding() {
    let rng = &mut StdRng::seed_from_u64(2);
    // Batches beyond 32 rows make warps take several rows; the last shape has over 1024 rows.
    for (batch, classes, padding) in [
        (1, 1, 0),
        (1, 10, 0),
        (3, 7, 0),
        (7, 10, 3),
        (64, 10, 0),
        (64, 10, 32),
        (45, 37, 0),
        (1100, 10, 60),
    ] {
        let s = XentShape { batch, classes };
        // Logits up to ±8, so that the softmax must be computed stably; every other row whole
        // numbers, so that the argmax has ties to break.
        let logits: Vec<f32> = random(rng, batch * classes)
            .iter()
            .map(|v| 8.0 * v)
            .enumerate()
            .map(|(i, v)| if i / classes % 2 == 0 { v.round() } else { v })
            .collect();
        let mut labels: Vec<u32> = (0..batch)
            .map(|_| rng.random_range(0..classes as u32))
            .collect();
        // Padding rows at the end, as an epoch's last batch has them.
        labels[batch - padding..].fill(IGNORE_LABEL);
        // The reference skips the padding rows itself.
        let mut want_totals = [0.5f64, 2.0];
        r::softmax_xent_forward(&s, &widen(&logits), &labels, &mut want_totals);
        let mut want_dlogits = vec![f64::NAN; batch * classes];
        r::softmax_xent_backward(&s, &widen(&logits), &labels, &mut want_dlogits);

        for dev in devices() {
            let what = format!("{} {s:?}, padding {padding}", dev.name());
            let mut totals = upload(dev, &[0.5f32, 2.0]);
            let mut dlogits = nan_buffer(dev, batch * classes);
            let (logits, labels) = (upload(dev, &logits), upload(dev, &labels));
            dev.softmax_xent_fused(&s, &logits, &labels, &mut totals, &mut dlogits)
                .unwrap();
            let totals = download(dev, &totals);
            assert_close(&format!("{what}: loss"), &totals[..1], &want_totals[..1]);
            assert_eq!(totals[1] as f64, want_totals[1], "{what}: correct count");
            let dlogits = download(dev, &dlogits);
            assert_close(&format!("{what}: dlogits"), &dlogits, &want_dlogits);
        }
    }
}

/// A batch of padding alone adds nothing to the totals and gets a zero gradient on every device.
/// (PyTorch's mean loss of such a batch is 0/0 = NaN; the op returns sums, so the caller never
/// divides by its zero rows.)
#[test]
fn softmax_xent_fused_of_a_batch_of_padding_adds_nothing_and_has_zero_gradient() {
    let s = XentShape {
        batch: 5,
        classes: 10,
    };
    let rng = &mut StdRng::seed_from_u64(3);
    let logits = random(rng, s.batch * s.classes);
    let labels = vec![IGNORE_LABEL; s.batch];
    let mut want_totals = [0.5f64, 2.0];
    r::softmax_xent_forward(&s, &widen(&logits), &labels, &mut want_totals);
    let mut want_dlogits = vec![f64::NAN; logits.len()];
    r::softmax_xent_backward(&s, &widen(&logits), &labels, &mut want_dlogits);
    assert_eq!(want_totals, [0.5, 2.0], "reference totals");
    assert!(want_dlogits.iter().all(|&d| d == 0.0), "reference gradient");
    for dev in devices() {
        let mut totals = upload(dev, &[0.5f32, 2.0]);
        let mut dlogits = nan_buffer(dev, logits.len());
        let (logits, labels) = (upload(dev, &logits), upload(dev, &labels));
        dev.softmax_xent_fused(&s, &logits, &labels, &mut totals, &mut dlogits)
            .unwrap();
        assert_eq!(download(dev, &totals), [0.5, 2.0], "{}: totals", dev.name());
        let dlogits = download(dev, &dlogits);
        assert!(
            dlogits.iter().all(|&d| d == 0.0),
            "{}: dlogits {dlogits:?}",
            dev.name()
        );
    }
}
