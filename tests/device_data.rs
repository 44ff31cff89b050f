//! The data-movement kernels (kernels/data.cu) against the reference ops, on the device named by
//! HANDWRITTEN_TEST_DEVICE (default `emulated`).

use kernels::{reference, Device};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn device() -> Device {
    let name = std::env::var("HANDWRITTEN_TEST_DEVICE").unwrap_or_else(|_| "emulated".into());
    Device::from_name(&name).unwrap_or_else(|e| panic!("HANDWRITTEN_TEST_DEVICE={name}: {e}"))
}

#[test]
fn gather_images_matches_the_reference() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(10);
    for (image_count, image_len, batch) in [(100, 784, 64), (7, 5, 13), (1, 1, 1), (3, 10, 0)] {
        let images: Vec<u8> = (0..image_count * image_len).map(|_| rng.random()).collect();
        let indices: Vec<u32> = (0..batch)
            .map(|_| rng.random_range(0..image_count as u32))
            .collect();
        let mut want = vec![0.0f32; batch * image_len];
        reference::gather_images(&images, image_len, &indices, &mut want);

        let images_buf = dev.upload(&images).unwrap();
        let indices_buf = dev.upload(&indices).unwrap();
        let mut out = dev.upload(&vec![f32::NAN; batch * image_len]).unwrap();
        dev.gather_images(&images_buf, image_len, &indices_buf, &mut out)
            .unwrap();
        let got = dev.download(&out).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6,
                "{image_count}x{image_len}, batch {batch}: out[{i}] = {g}, want {w}"
            );
        }
    }
}

#[test]
fn gather_labels_matches_the_reference() {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(11);
    for (label_count, batch) in [(60_000, 64), (10, 1000), (1, 1)] {
        let labels: Vec<u8> = (0..label_count).map(|_| rng.random_range(0..10)).collect();
        let indices: Vec<u32> = (0..batch)
            .map(|_| rng.random_range(0..label_count as u32))
            .collect();
        let mut want = vec![0u32; batch];
        reference::gather_labels(&labels, &indices, &mut want);

        let labels_buf = dev.upload(&labels).unwrap();
        let indices_buf = dev.upload(&indices).unwrap();
        let mut out = dev.upload(&vec![u32::MAX; batch]).unwrap();
        dev.gather_labels(&labels_buf, &indices_buf, &mut out)
            .unwrap();
        assert_eq!(
            dev.download(&out).unwrap(),
            want,
            "{label_count} labels, batch {batch}"
        );
    }
}

#[test]
fn out_of_range_indices_never_read_outside_the_data() {
    let dev = device();
    let images = dev.upload(&[7u8; 12]).unwrap();
    let indices = dev.upload(&[1u32, 3]).unwrap();
    let mut out = dev.zeros::<f32>(8).unwrap();
    match dev {
        // The host checks indices before gathering.
        Device::Cpu => assert!(dev.gather_images(&images, 4, &indices, &mut out).is_err()),
        // Kernels cannot return errors: the bad image comes out as NaN.
        _ => {
            dev.gather_images(&images, 4, &indices, &mut out).unwrap();
            let got = dev.download(&out).unwrap();
            assert!(
                got[..4].iter().all(|&v| v == (7.0 / 255.0 - 0.5) / 0.5),
                "{got:?}"
            );
            assert!(got[4..].iter().all(|v| v.is_nan()), "{got:?}");
        }
    }
}

#[test]
fn fill_zero_clears_every_element() {
    let dev = device();
    for len in [0, 1, 255, 256, 257, 10_000] {
        let mut floats = dev.upload(&vec![1.5f32; len]).unwrap();
        dev.fill_zero(&mut floats).unwrap();
        assert_eq!(dev.download(&floats).unwrap(), vec![0.0; len], "{len} f32");
        // Byte buffers whose length is no multiple of 4 take the other path.
        let mut bytes = dev.upload(&vec![9u8; len]).unwrap();
        dev.fill_zero(&mut bytes).unwrap();
        assert_eq!(dev.download(&bytes).unwrap(), vec![0; len], "{len} u8");
    }
}
