//! Choosing a device: `cuda` without a GPU is an error that says why, never a panic, and `auto`
//! falls back to the cpu device.

use kernels::Device;

#[test]
fn cuda_is_a_gpu_or_an_error_that_says_why() {
    match Device::from_name("cuda") {
        Ok(dev) => {
            assert_eq!(dev.name(), "cuda");
            assert_eq!(Device::from_name("auto").unwrap().name(), "cuda");
        }
        Err(error) => {
            let message = error.to_string();
            let test_device = std::env::var("HANDWRITTEN_TEST_DEVICE").unwrap_or_default();
            assert_ne!(
                test_device, "cuda",
                "the GPU check asked for cuda: {message}"
            );
            assert!(message.starts_with("device cuda: "), "{message}");
            assert!(
                ["NVRTC", "driver", "GPU"]
                    .iter()
                    .any(|cause| message.contains(cause)),
                "{message}"
            );
            assert_eq!(Device::from_name("auto").unwrap(), Device::Cpu);
        }
    }
}

#[test]
fn buffers_from_one_device_kind_are_refused_by_another() {
    let Ok(gpu) = Device::from_name("cuda") else {
        eprintln!("skipped: no GPU");
        return;
    };
    let host = Device::Cpu.upload(&[1.0f32; 4]).unwrap();
    let mut on_gpu = gpu.zeros::<f32>(4).unwrap();
    let dy = gpu.zeros::<f32>(4).unwrap();
    let error = gpu
        .relu_backward(&host, &dy, &mut on_gpu)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("relu_backward") && error.contains("another device"),
        "{error}"
    );
    let error = Device::Cpu.download(&on_gpu).unwrap_err().to_string();
    assert!(error.contains("another device"), "{error}");
}
