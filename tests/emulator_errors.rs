//! The emulated device turns bad launches into errors that name the kernel, where a GPU would
//! fail or hang.

use kernels::gpu_arch::ComputeCapability;
use kernels::launch::{KernelArg, Launch, MAX_SHARED_BYTES};
use kernels::{Device, Error};

fn launch_error(launch: Launch) -> String {
    launch_error_on(
        Device::Emulated(ComputeCapability::EMULATED_DEFAULT),
        launch,
    )
}

fn launch_error_on(dev: Device, launch: Launch) -> String {
    let mut out = dev.zeros::<f32>(1024).unwrap();
    let launch = Launch {
        args: launch
            .args
            .into_iter()
            .map(|a| {
                if a == KernelArg::Ptr(0) {
                    out.arg_mut()
                } else {
                    a
                }
            })
            .collect(),
        ..launch
    };
    // SAFETY: every launch here is refused before any thread runs, except the divergent one and
    // the half-warp mma, whose threads read and write within `out`.
    match unsafe { dev.launch(&launch) } {
        Err(e @ Error::Launch { .. }) => e.to_string(),
        other => panic!("expected a launch error, got {other:?}"),
    }
}

/// A launch of `kernel` whose first argument is replaced by a real buffer.
fn reverse_blocks(block: [u32; 3], shared_bytes: u32, args: Vec<KernelArg>) -> Launch {
    Launch {
        kernel: "selftest_reverse_blocks",
        grid: [1, 1, 1],
        block,
        shared_bytes,
        args,
    }
}

#[test]
fn unknown_kernels_are_named() {
    let message = launch_error(Launch::linear("no_such_kernel", 32, 32, vec![]));
    assert!(
        message.contains("no_such_kernel") && message.contains("no kernel"),
        "{message}"
    );
}

#[test]
fn argument_count_and_kinds_are_checked_against_the_signature() {
    let out = KernelArg::Ptr(0);
    let message = launch_error(reverse_blocks([32, 1, 1], 128, vec![out]));
    assert!(
        message.contains("selftest_reverse_blocks") && message.contains("takes 2 arguments"),
        "{message}"
    );
    let message = launch_error(reverse_blocks(
        [32, 1, 1],
        128,
        vec![out, KernelArg::F32(1.0)],
    ));
    assert!(
        message.contains("argument 1") && message.contains("pointer"),
        "{message}"
    );
}

#[test]
fn configurations_past_the_gpu_limits_are_refused() {
    let out = KernelArg::Ptr(0);
    for (block, shared, limit) in [
        ([1025, 1, 1], 0, "1024"),
        ([32, 32, 2], 0, "2048 threads"),
        ([1, 1, 65], 0, "1..=64"),
        ([0, 1, 1], 0, "block"),
        ([32, 1, 1], MAX_SHARED_BYTES + 4, "shared memory"),
    ] {
        let message = launch_error(reverse_blocks(block, shared, vec![out, out]));
        assert!(
            message.contains("selftest_reverse_blocks") && message.contains(limit),
            "{message}"
        );
    }
    let message = launch_error(Launch {
        grid: [1, 0, 1],
        ..reverse_blocks([32, 1, 1], 128, vec![out, out])
    });
    assert!(message.contains("grid"), "{message}");
}

#[test]
fn a_shuffle_waiting_for_a_lane_at_syncthreads_is_reported() {
    let launch = Launch::linear(
        "selftest_divergent_barrier",
        32,
        32,
        vec![KernelArg::Ptr(0)],
    );
    let message = launch_error(launch);
    assert!(
        message.contains("selftest_divergent_barrier") && message.contains("__syncthreads"),
        "{message}"
    );
}

#[test]
fn an_mma_that_not_every_lane_reaches_is_reported() {
    // Half a warp: lanes 16..31 never call the warp-wide instruction.
    let out = KernelArg::Ptr(0);
    let launch = Launch::linear("selftest_mma_tf32", 16, 16, vec![out; 5]);
    let message = launch_error(launch);
    assert!(
        message.contains("selftest_mma_tf32") && message.contains("all 32 lanes"),
        "{message}"
    );
}

#[test]
fn the_cpu_device_runs_no_kernels() {
    let launch = Launch::linear("fill_zero", 1, 32, vec![]);
    // SAFETY: refused before anything runs.
    let error = unsafe { Device::Cpu.launch(&launch) }.unwrap_err();
    assert!(error.to_string().contains("fill_zero"), "{error}");
}

#[test]
fn device_names() {
    assert_eq!(Device::from_name("emulated").unwrap().name(), "emulated");
    assert_eq!(Device::from_name("cpu").unwrap(), Device::Cpu);
    let error = Device::from_name("tpu").unwrap_err().to_string();
    assert!(
        error.contains("tpu") && error.contains("emulated"),
        "{error}"
    );
}

/// A block larger than the kernel's `__launch_bounds__` fails on a GPU; the emulator says so.
#[test]
fn a_block_past_the_kernels_launch_bounds_is_refused() {
    let out = KernelArg::Ptr(0);
    let launch = Launch {
        kernel: "gemm_lab_simt",
        grid: [1, 1, 1],
        block: [512, 1, 1],
        shared_bytes: 0,
        args: vec![
            out,
            out,
            out,
            KernelArg::I32(1),
            KernelArg::I32(1),
            KernelArg::I32(1),
        ],
    };
    let message = launch_error(launch);
    assert!(
        message.contains("gemm_lab_simt") && message.contains("__launch_bounds__(256)"),
        "{message}"
    );
}

/// Each emulated architecture has its own shared memory limit (64 KiB a block on Turing, 227 KiB
/// on Hopper) and its own build of the kernels (no TF32 on Turing).
#[test]
fn each_emulated_architecture_keeps_its_own_limits_and_kernels() {
    let turing = Device::Emulated(ComputeCapability::new(7, 5));
    let out = KernelArg::Ptr(0);
    let big = reverse_blocks([32, 1, 1], 100 * 1024, vec![out, out]);
    let message = launch_error_on(turing.clone(), big.clone());
    assert!(
        message.contains("shared memory") && message.contains("7.5"),
        "{message}"
    );
    let hopper = Device::Emulated(ComputeCapability::new(9, 0));
    let mut buffer = hopper.zeros::<f32>(64).unwrap();
    let fits = Launch {
        args: vec![buffer.arg(), buffer.arg_mut()],
        ..big
    };
    // SAFETY: the kernel reverses 32 floats of x into y; the buffer holds 64.
    unsafe { hopper.launch(&fits) }.unwrap();

    let message = launch_error_on(
        turing,
        Launch::linear("selftest_mma_tf32", 32, 32, vec![out; 5]),
    );
    assert!(
        message.contains("not built for compute capability 7.5"),
        "{message}"
    );
}

/// A panic while a step is being captured ends the capture on the way out: the device then takes
/// copies and new captures again, instead of refusing everything as still capturing.
#[test]
fn a_panic_during_a_capture_ends_the_capture() {
    let dev = Device::Emulated(ComputeCapability::EMULATED_DEFAULT);
    let panicked = std::panic::catch_unwind(|| {
        let _ = dev.capture(|| -> Result<(), Error> { panic!("a layer failed mid-capture") });
    });
    assert!(panicked.is_err());
    dev.upload(&[1.0f32; 4])
        .expect("the capture was left open: copies are refused");
    let graph = dev.capture(|| -> Result<(), Error> { Ok(()) }).unwrap();
    assert_eq!(graph.launches().map(<[_]>::len), Some(0));
}
