//! The CUDA features the emulator implements, each exercised by a kernel of kernels/selftest.cu
//! and checked against plain Rust. Runs on the device named by HANDWRITTEN_TEST_DEVICE (default
//! `emulated`), so the same expectations hold the emulator and a real GPU to the same semantics.

mod common;

use common::{assert_close, kernel_device, random, widen};
use kernels::gpu_arch::ComputeCapability;
use kernels::launch::{KernelArg, Launch};
use kernels::{Buffer, Device, Element};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn launch(dev: &Device, launch: Launch) {
    // SAFETY: every test passes buffers sized for what its kernel reads and writes.
    unsafe { dev.launch(&launch) }.unwrap();
}

fn download<T: Element>(dev: &Device, buf: &Buffer<T>) -> Vec<T> {
    dev.synchronize().unwrap();
    dev.download(buf).unwrap()
}

#[test]
fn block_reduction_through_shared_memory_and_syncthreads() {
    let dev = kernel_device();
    let mut rng = StdRng::seed_from_u64(1);
    for (n, block) in [(1000, 256u32), (64, 64), (5000, 1024), (33, 32)] {
        let x = random(&mut rng, n);
        let blocks = n.div_ceil(block as usize);
        let xb = dev.upload(&x).unwrap();
        let mut sums = dev.zeros::<f32>(blocks).unwrap();
        let args = vec![xb.arg(), sums.arg_mut(), KernelArg::U32(n as u32)];
        launch(&dev, Launch::linear("selftest_block_sum", n, block, args));
        let want: Vec<f64> = x
            .chunks(block as usize)
            .map(|c| widen(c).iter().sum())
            .collect();
        assert_close("block sums", &download(&dev, &sums), &want);
    }
}

#[test]
fn warp_reductions_through_shuffles() {
    let dev = kernel_device();
    let mut rng = StdRng::seed_from_u64(2);
    // 200 threads: the last warp of the second block is partly past n.
    let n = 200;
    let x = random(&mut rng, n);
    let xb = dev.upload(&x).unwrap();
    let mut sums = dev.zeros::<f32>(n.div_ceil(32)).unwrap();
    let mut maxima = dev.zeros::<f32>(n).unwrap();
    let args = vec![
        xb.arg(),
        sums.arg_mut(),
        maxima.arg_mut(),
        KernelArg::U32(n as u32),
    ];
    launch(&dev, Launch::linear("selftest_warp_reduce", n, 128, args));
    let want_sums: Vec<f64> = x.chunks(32).map(|c| widen(c).iter().sum()).collect();
    let want_maxima: Vec<f32> = (0..n)
        .map(|i| {
            x[i / 32 * 32..(i / 32 * 32 + 32).min(n)]
                .iter()
                .copied()
                .fold(f32::MIN, f32::max)
        })
        .collect();
    assert_close("warp sums", &download(&dev, &sums), &want_sums);
    assert_eq!(download(&dev, &maxima), want_maxima, "warp maxima");
}

/// What CUDA documents each shuffle flavour to return, lane by lane.
fn expected_shuffles(x: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    for (i, _) in x.iter().enumerate() {
        let base = i / 32 * 32;
        let lane = i % 32;
        let value = |l: usize| x[base + l];
        let segment = |width: usize| lane / width * width;
        let up = if lane % 32 >= 1 {
            value(lane - 1)
        } else {
            value(lane)
        };
        let down = if lane % 16 + 2 < 16 {
            value(lane + 2)
        } else {
            value(lane)
        };
        let xor = lane ^ 5;
        let xor = if xor < segment(8) + 8 {
            value(xor)
        } else {
            value(lane)
        };
        let ballot = (0..32)
            .filter(|&l| value(l) & 1 == 1)
            .fold(0u32, |b, l| b | 1 << l);
        out.extend([
            value(3),
            value(segment(8) + 3),
            up,
            down,
            xor,
            ballot as i32,
        ]);
    }
    out
}

#[test]
fn every_shuffle_flavour_and_ballot() {
    let dev = kernel_device();
    let mut rng = StdRng::seed_from_u64(3);
    let n = 128;
    let x: Vec<i32> = (0..n).map(|_| rng.random_range(-1000..1000)).collect();
    // Buffers hold u32; the kernel reads the same bits as int.
    let xb = dev
        .upload(&x.iter().map(|&v| v as u32).collect::<Vec<_>>())
        .unwrap();
    let mut out = dev.zeros::<u32>(6 * n).unwrap();
    launch(
        &dev,
        Launch::linear("selftest_shuffles", n, 64, vec![xb.arg(), out.arg_mut()]),
    );
    let got: Vec<i32> = download(&dev, &out).into_iter().map(|v| v as i32).collect();
    assert_eq!(got, expected_shuffles(&x));
}

#[test]
fn dynamic_shared_memory() {
    let dev = kernel_device();
    let mut rng = StdRng::seed_from_u64(4);
    for block in [32u32, 256, 1024] {
        let n = block as usize * 3;
        let x = random(&mut rng, n);
        let xb = dev.upload(&x).unwrap();
        let mut y = dev.zeros::<f32>(n).unwrap();
        let mut reverse = Launch::linear(
            "selftest_reverse_blocks",
            n,
            block,
            vec![xb.arg(), y.arg_mut()],
        );
        reverse.shared_bytes = block * 4;
        launch(&dev, reverse);
        let want: Vec<f32> = x
            .chunks(block as usize)
            .flat_map(|c| c.iter().rev().copied())
            .collect();
        assert_eq!(download(&dev, &y), want, "block {block}");
    }
}

#[test]
fn atomics_across_blocks() {
    let dev = kernel_device();
    let mut rng = StdRng::seed_from_u64(5);
    let (n, bins) = (10_000, 7);
    let values: Vec<u32> = (0..n).map(|_| rng.random_range(0..1000)).collect();
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-100.0..100.0)).collect();
    let (vb, xb) = (dev.upload(&values).unwrap(), dev.upload(&x).unwrap());
    let mut counts = dev.zeros::<u32>(bins).unwrap();
    let mut total = dev.zeros::<f32>(1).unwrap();
    let mut largest = dev.upload(&[i32::MIN as u32]).unwrap();
    let args = vec![
        vb.arg(),
        xb.arg(),
        counts.arg_mut(),
        total.arg_mut(),
        largest.arg_mut(),
        KernelArg::U32(bins as u32),
        KernelArg::U32(n as u32),
    ];
    launch(&dev, Launch::linear("selftest_atomics", n, 128, args));
    let mut want_counts = vec![0u32; bins];
    values
        .iter()
        .for_each(|&v| want_counts[v as usize % bins] += 1);
    assert_eq!(download(&dev, &counts), want_counts);
    let want_total: f64 = x.iter().map(|&v| v as f64).sum();
    let got_total = download(&dev, &total)[0] as f64;
    // 10 000 float additions in any order: allow their rounding.
    assert!(
        (got_total - want_total).abs() < 0.05,
        "total {got_total}, want {want_total}"
    );
    let want_largest = x.iter().map(|&v| v as i32).max().unwrap();
    assert_eq!(download(&dev, &largest)[0] as i32, want_largest);
}

#[test]
fn three_dimensional_grids_run_every_thread_once() {
    let dev = kernel_device();
    for (grid, block) in [
        ([3, 2, 2], [4, 3, 2]),
        ([1, 5, 1], [32, 1, 1]),
        ([2, 1, 3], [7, 5, 3]),
    ] {
        let per_block = block.iter().product::<u32>() as usize;
        let threads = grid.iter().product::<u32>() as usize * per_block;
        let mut out = dev.upload(&vec![u32::MAX; 6 * threads]).unwrap();
        let args = vec![out.arg_mut()];
        launch(
            &dev,
            Launch {
                kernel: "selftest_coordinates",
                grid,
                block,
                shared_bytes: 0,
                args,
            },
        );
        let got = download(&dev, &out);
        let mut want = Vec::new();
        for bz in 0..grid[2] {
            for by in 0..grid[1] {
                for bx in 0..grid[0] {
                    for tz in 0..block[2] {
                        for ty in 0..block[1] {
                            for tx in 0..block[0] {
                                want.extend([tx, ty, tz, bx, by, bz]);
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(got, want, "grid {grid:?} block {block:?}");
    }
}

#[test]
fn tiled_matmul_with_barriers_in_a_loop() {
    let dev = kernel_device();
    let mut rng = StdRng::seed_from_u64(6);
    for (m, n, k) in [(37, 53, 29), (64, 64, 64), (1, 100, 17)] {
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let (ab, bb) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
        let mut c = dev.zeros::<f32>(m * n).unwrap();
        let u = |v: usize| KernelArg::U32(v as u32);
        let args = vec![ab.arg(), bb.arg(), c.arg_mut(), u(m), u(n), u(k)];
        let grid = [n.div_ceil(16) as u32, m.div_ceil(16) as u32, 1];
        launch(
            &dev,
            Launch {
                kernel: "selftest_matmul",
                grid,
                block: [16, 16, 1],
                shared_bytes: 0,
                args,
            },
        );
        let mut want = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
            }
        }
        assert_close(&format!("{m}x{n}x{k}"), &download(&dev, &c), &want);
    }
}

/// One warp's launch of `kernel`.
/// The kernel device where it has TF32 tensor cores and cp.async (compute capability 8.0 on),
/// whose self-tests exist only there; None, with a note, on Turing.
fn ampere_device() -> Option<Device> {
    let dev = kernel_device();
    let ampere = dev.capability().is_some_and(|cc| cc.has_tf32());
    if !ampere {
        eprintln!(
            "skipped: {} has no TF32 tensor cores or cp.async",
            dev.name()
        );
    }
    ampere.then_some(dev)
}

/// The emulated device as a GPU with cp.async, for the deliberately wrong kernels.
fn emulated_ampere() -> Device {
    Device::Emulated(ComputeCapability::EMULATED_DEFAULT)
}

fn one_warp(kernel: &'static str, args: Vec<KernelArg>) -> Launch {
    Launch::linear(kernel, 32, 32, args)
}

/// D = A·B + C by selftest_mma_tf32, and what each lane's four d registers held.
fn mma(dev: &Device, a: &[f32], b: &[f32], c: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (a, b, c) = (
        dev.upload(a).unwrap(),
        dev.upload(b).unwrap(),
        dev.upload(c).unwrap(),
    );
    let mut d = dev.upload(&[f32::NAN; 128]).unwrap();
    let mut lanes = dev.upload(&[f32::NAN; 128]).unwrap();
    let args = vec![a.arg(), b.arg(), c.arg(), d.arg_mut(), lanes.arg_mut()];
    launch(dev, one_warp("selftest_mma_tf32", args));
    (download(dev, &d), download(dev, &lanes))
}

/// The 8x8 identity, as B [k][n].
fn identity8() -> Vec<f32> {
    (0..64)
        .map(|e| if e / 8 == e % 8 { 1.0 } else { 0.0 })
        .collect()
}

/// With B the identity, D = A: every element of A comes back where the PTX ISA's fragment
/// layout says, so a mix-up of A's rows (a1: row g + 8) and columns (a2: column t + 4), or of the
/// lanes holding D, shows. (A k-permutation applied to both A and B cannot show in D, and does
/// not matter.)
#[test]
fn mma_tf32_fragments_follow_the_ptx_layout() {
    let Some(dev) = ampere_device() else { return };
    // A[m][k] = 8·m + k + 1: distinct, and exact in TF32.
    let a: Vec<f32> = (0..128).map(|e| e as f32 + 1.0).collect();
    let (d, lanes) = mma(&dev, &a, &identity8(), &[0.0; 128]);
    assert_eq!(d, a, "D = A·I + 0");
    // Each lane's registers, from the PTX ISA's table: c0 = (g, 2t), c1 = (g, 2t + 1),
    // c2 = (g + 8, 2t), c3 = (g + 8, 2t + 1); spot checks from the table itself.
    let element = |lane: usize, i: usize| {
        let (g, t) = (lane / 4, lane % 4);
        a[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2]
    };
    for lane in 0..32 {
        for i in 0..4 {
            assert_eq!(lanes[4 * lane + i], element(lane, i), "lane {lane}, d{i}");
        }
    }
    let at = |row: usize, col: usize| a[row * 8 + col];
    assert_eq!(lanes[..4], [at(0, 0), at(0, 1), at(8, 0), at(8, 1)]);
    assert_eq!(lanes[20..24], [at(1, 2), at(1, 3), at(9, 2), at(9, 3)]);
    assert_eq!(lanes[124..], [at(7, 6), at(7, 7), at(15, 6), at(15, 7)]);
}

/// A general product of TF32-exact values, with C, against an fp64 sum: the products are exact,
/// so only the fp32 accumulation may differ, by a few ulps of Σ|a·b| + |c|.
#[test]
fn mma_tf32_computes_a_times_b_plus_c() {
    let Some(dev) = ampere_device() else { return };
    let mut rng = StdRng::seed_from_u64(9);
    // Multiples of 2^-8 in (-4, 4): 11 significant bits at most.
    let mut tf32_exact = |n| -> Vec<f32> {
        (0..n)
            .map(|_| rng.random_range(-1023..=1023) as f32 / 256.0)
            .collect()
    };
    let (a, b, c) = (tf32_exact(128), tf32_exact(64), tf32_exact(128));
    let (d, _) = mma(&dev, &a, &b, &c);
    for m in 0..16 {
        for n in 0..8 {
            let terms = (0..8).map(|k| a[m * 8 + k] as f64 * b[k * 8 + n] as f64);
            let magnitude: f64 =
                terms.clone().map(f64::abs).sum::<f64>() + c[m * 8 + n].abs() as f64;
            let want = terms.sum::<f64>() + c[m * 8 + n] as f64;
            let error = (d[m * 8 + n] as f64 - want).abs();
            assert!(
                error <= 4.0 * f32::EPSILON as f64 * magnitude,
                "D[{m}][{n}]: got {}, want {want}",
                d[m * 8 + n]
            );
        }
    }
}

/// Raw fp32 operands: the tensor cores use only their TF32 bits, dropping (not rounding) the low
/// 13. 1 + 2^-11 + 2^-20 would round to 1 + 2^-10; truncated it is 1.
#[test]
fn mma_tf32_truncates_raw_fp32_operands() {
    let Some(dev) = ampere_device() else { return };
    let raw = 1.0 + 2f32.powi(-11) + 2f32.powi(-20);
    let mut a = vec![0.0; 128];
    a[0] = raw; // A[0][0]
    a[8 * 9 + 5] = -raw; // A[9][5]
    let (d, _) = mma(&dev, &a, &identity8(), &[0.0; 128]);
    assert_eq!(d[0], 1.0);
    assert_eq!(d[8 * 9 + 5], -1.0);
}

/// cvt.rna.tf32.f32: to nearest with ties away from zero, on 10 mantissa bits, subnormals kept;
/// a carry may reach Inf.
#[test]
fn cvt_rna_tf32_rounds_to_nearest_ties_away() {
    let Some(dev) = ampere_device() else { return };
    let cases: [(u32, u32, &str); 14] = [
        (0x3f80_0000, 0x3f80_0000, "1 is exact"),
        (0x3f80_1000, 0x3f80_2000, "1 + 2^-11, a tie, rounds away"),
        (
            0xbf80_1000,
            0xbf80_2000,
            "-(1 + 2^-11), a tie, rounds away from zero",
        ),
        (0x3f80_0fff, 0x3f80_0000, "just below the tie rounds down"),
        (
            0x3f80_3000,
            0x3f80_4000,
            "1 + 3·2^-11, a tie above an odd value, rounds away",
        ),
        (
            0x3fff_f000,
            0x4000_0000,
            "the carry reaches the exponent: 2",
        ),
        (
            0x0000_1000,
            0x0000_2000,
            "a subnormal tie rounds away, not to zero",
        ),
        (
            0x0000_0fff,
            0x0000_0000,
            "the smallest subnormals round to zero",
        ),
        (0x8000_0000, 0x8000_0000, "-0 stays -0"),
        (
            0x7f7f_efff,
            0x7f7f_e000,
            "below FLT_MAX's tie: the largest TF32",
        ),
        (0x7f7f_f000, 0x7f80_0000, "FLT_MAX's tie rounds to Inf"),
        (0x7f80_0000, 0x7f80_0000, "Inf passes"),
        (0xff80_0000, 0xff80_0000, "-Inf passes"),
        (
            0x7fff_ffff,
            0x7fff_e000,
            "a NaN with high payload bits stays NaN",
        ),
    ];
    let x: Vec<f32> = cases.iter().map(|c| f32::from_bits(c.0)).collect();
    let xb = dev.upload(&x).unwrap();
    let mut out = dev.zeros::<u32>(x.len()).unwrap();
    let args = vec![xb.arg(), out.arg_mut(), KernelArg::U32(x.len() as u32)];
    launch(&dev, one_warp("selftest_cvt_rna_tf32", args));
    let got = download(&dev, &out);
    for ((input, want, what), got) in cases.iter().zip(got) {
        if f32::from_bits(*want).is_nan() {
            // The NaN's payload is the hardware's business; that it stays NaN is not.
            assert!(
                f32::from_bits(got).is_nan(),
                "{what}: {input:#010x} gave {got:#010x}"
            );
        } else {
            assert_eq!(got, *want, "{what}: {input:#010x} gave {got:#010x}");
        }
    }
}

/// cp.async lands per group at wait_group, zero-fills past src-size, and is visible to other
/// threads after the barrier.
#[test]
fn cp_async_groups_land_at_their_wait() {
    let Some(dev) = ampere_device() else { return };
    let x: Vec<f32> = (0..64).map(|i| i as f32 + 1.0).collect();
    let xb = dev.upload(&x).unwrap();
    let mut out = dev.upload(&[f32::NAN; 96]).unwrap();
    launch(
        &dev,
        one_warp("selftest_cp_async", vec![xb.arg(), out.arg_mut()]),
    );
    let out = download(&dev, &out);
    let neighbours: Vec<f32> = (0..32).map(|i| x[32 + (i + 1) % 32]).collect();
    assert_eq!(out[..32], x[..32], "group 0 after wait_group 2");
    assert_eq!(
        out[32..64],
        neighbours[..],
        "group 1, another thread's, after the barrier"
    );
    assert_eq!(out[64..], [0.0; 32], "zero-filled");
}

/// The emulator performs a copy only at a wait that covers it and holds NaN in its destination
/// until then, so a kernel that reads too early reads NaN, deterministically (on a GPU: a race,
/// so emulator only).
#[test]
fn cp_async_is_not_visible_before_its_wait_on_the_emulator() {
    let dev = emulated_ampere();
    let x: Vec<f32> = (0..32).map(|i| i as f32 + 1.0).collect();
    let xb = dev.upload(&x).unwrap();
    let mut out = dev.upload(&[f32::NAN; 32]).unwrap();
    let args = vec![xb.arg(), out.arg_mut()];
    launch(&dev, one_warp("selftest_cp_async_unwaited", args));
    let out = download(&dev, &out);
    assert!(out.iter().all(|v| v.is_nan()), "{out:?}");
}

/// selftest_cp_async_pipeline with the `barriers` given (bit 0: after the wait, bit 1: after
/// the read), over 4 steps.
fn cp_async_pipeline(dev: &Device, barriers: i32) -> (Vec<f32>, Vec<f32>) {
    let steps: usize = 4;
    let x: Vec<f32> = (0..32 * steps).map(|i| i as f32 + 1.0).collect();
    let xb = dev.upload(&x).unwrap();
    let mut out = dev.upload(&vec![f32::NAN; x.len()]).unwrap();
    let args = vec![
        xb.arg(),
        out.arg_mut(),
        KernelArg::I32(steps as i32),
        KernelArg::I32(barriers),
    ];
    launch(dev, one_warp("selftest_cp_async_pipeline", args));
    let want = (0..x.len())
        .map(|e| x[e / 32 * 32 + (e + 1) % 32])
        .collect();
    (download(dev, &out), want)
}

/// The double-buffered cp.async of the GEMM tile loop, with both barriers: every thread reads
/// its neighbour's copy of each step.
#[test]
fn cp_async_double_buffering_with_both_barriers_reads_every_copy() {
    let Some(dev) = ampere_device() else { return };
    let (got, want) = cp_async_pipeline(&dev, 3);
    assert_eq!(got, want);
}

/// Either barrier left out, the pipeline races on a GPU; the emulator makes it fail for sure:
/// without the barrier after the wait a thread reads a neighbour's copy still in flight, without
/// the one after the read a thread refills the buffer its neighbours still read. Both read NaN.
#[test]
fn cp_async_races_from_a_missing_barrier_read_nan_on_the_emulator() {
    let dev = emulated_ampere();
    for (barriers, missing) in [(2, "after the wait"), (1, "after the read")] {
        let (got, want) = cp_async_pipeline(&dev, barriers);
        assert_ne!(got, want, "no barrier {missing}, yet every value arrived");
        assert!(
            got.iter().any(|v| v.is_nan()),
            "no barrier {missing}: {got:?}"
        );
    }
}

/// Static `__shared__` memory starts as NaN in every block on the emulator, as dynamic shared
/// memory does, so a kernel that reads it before writing it fails its tests there (on a GPU it
/// reads garbage: emulator only). Each block of selftest_shared_read_before_write leaves values
/// behind for the next block on the same OS thread, and the second launch runs after the first
/// left them, so without the poisoning this sees numbers.
#[test]
fn static_shared_memory_reads_nan_before_it_is_written_on_the_emulator() {
    let dev = emulated_ampere();
    let blocks = 8;
    for launch_number in 0..2 {
        let mut out = dev.zeros::<f32>(33 * blocks).unwrap();
        let launch_description = Launch {
            kernel: "selftest_shared_read_before_write",
            grid: [blocks as u32, 1, 1],
            block: [32, 1, 1],
            shared_bytes: 0,
            args: vec![out.arg_mut()],
        };
        launch(&dev, launch_description);
        let out = download(&dev, &out);
        let read = out.iter().position(|v| !v.is_nan());
        assert_eq!(read, None, "launch {launch_number}: {out:?}");
    }
}
