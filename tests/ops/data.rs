//! Moving data: batches of images and labels gathered by index (padding rows included), buffers
//! filled with zeros and copied. Exactly: nothing here rounds but the pixels' normalisation,
//! which every device computes as the reference does.

use kernels::reference as r;
use kernels::{Device, PAD_INDEX};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{assert_exact, devices, download, upload};

/// `batch` indices into `count` items, every seventh a padding row.
fn indices(rng: &mut StdRng, count: usize, batch: usize) -> Vec<u32> {
    (0..batch)
        .map(|i| match i % 7 {
            6 => PAD_INDEX,
            _ => rng.random_range(0..count as u32),
        })
        .collect()
}

#[test]
fn gather_images_matches_reference() {
    let mut rng = StdRng::seed_from_u64(10);
    for (count, image_len, batch) in [
        (100, 784, 64),
        (100, 784, 37),
        (7, 5, 13),
        (1, 1, 1),
        (3, 10, 0),
    ] {
        let images: Vec<u8> = (0..count * image_len).map(|_| rng.random()).collect();
        let indices = indices(&mut rng, count, batch);
        let mut want = vec![0.0f32; batch * image_len];
        r::gather_images(&images, image_len, &indices, &mut want);
        for dev in devices() {
            let mut out = upload(dev, &vec![f32::NAN; batch * image_len]);
            dev.gather_images(
                &upload(dev, &images),
                image_len,
                &upload(dev, &indices),
                &mut out,
            )
            .unwrap();
            let what = format!("{} {count}x{image_len}, batch {batch}", dev.name());
            assert_exact(&what, &download(dev, &out), &want);
        }
    }
}

#[test]
fn gather_labels_matches_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for (count, batch) in [(60_000, 64), (100, 37), (10, 1000), (1, 1)] {
        let labels: Vec<u8> = (0..count).map(|_| rng.random_range(0..10)).collect();
        let indices = indices(&mut rng, count, batch);
        let mut want = vec![0u32; batch];
        r::gather_labels(&labels, &indices, &mut want);
        for dev in devices() {
            let mut out = upload(dev, &vec![u32::MAX - 1; batch]);
            dev.gather_labels(&upload(dev, &labels), &upload(dev, &indices), &mut out)
                .unwrap();
            let what = format!("{} {count} labels, batch {batch}", dev.name());
            assert_exact(&what, &download(dev, &out), &want);
        }
    }
}

/// An index past the data (not padding) never reads outside it: the cpu device refuses it; a
/// kernel cannot return an error, so the image comes out as NaN.
#[test]
fn out_of_range_indices_never_read_outside_the_data() {
    for dev in devices() {
        let images = upload(dev, &[7u8; 12]);
        let indices = upload(dev, &[1u32, 3]);
        let mut out = dev.zeros::<f32>(8).unwrap();
        let result = dev.gather_images(&images, 4, &indices, &mut out);
        if *dev == Device::Cpu {
            let error = result.unwrap_err().to_string();
            assert!(
                error.contains("gather_images") && error.contains("index 3"),
                "{error}"
            );
            continue;
        }
        result.unwrap();
        let got = download(dev, &out);
        let pixel = (7.0 / 255.0 - 0.5) / 0.5;
        assert!(
            got[..4].iter().all(|&v| v == pixel),
            "{}: {got:?}",
            dev.name()
        );
        assert!(
            got[4..].iter().all(|v| v.is_nan()),
            "{}: {got:?}",
            dev.name()
        );
    }
}

#[test]
fn fill_zero_clears_every_element_and_copy_copies_them() {
    for dev in devices() {
        for len in [0, 1, 255, 256, 257, 10_000] {
            let what = format!("{} {len}", dev.name());
            let values: Vec<f32> = (0..len).map(|i| i as f32 + 0.5).collect();
            let mut floats = upload(dev, &values);
            let mut copied = upload(dev, &vec![f32::NAN; len]);
            dev.copy(&floats, &mut copied).unwrap();
            assert_exact(
                &format!("{what} f32 copy"),
                &download(dev, &copied),
                &values,
            );
            dev.fill_zero(&mut floats).unwrap();
            assert_exact(
                &format!("{what} f32"),
                &download(dev, &floats),
                &vec![0.0; len],
            );
            // Byte buffers whose length is no multiple of 4 take another path.
            let mut bytes = upload(dev, &vec![9u8; len]);
            dev.fill_zero(&mut bytes).unwrap();
            assert_exact(&format!("{what} u8"), &download(dev, &bytes), &vec![0; len]);
        }
    }
}
