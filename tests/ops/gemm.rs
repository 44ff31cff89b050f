//! Split sums are added in a fixed order: two runs give the same bits, on either engine.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::gemm::{GemmInputs, GemmOp, Outputs};
use crate::common::{conv, devices, linear, precisions};

/// Split sums are added in a fixed order: two runs give the same bits, on either engine.
#[test]
fn split_sums_are_bit_identical_across_runs() {
    let mut rng = StdRng::seed_from_u64(18);
    // Both split their weight gradient's sum on the kernels (over 8·784 pixels, and over the
    // batch).
    let ops: [&dyn GemmOp; 2] = [&conv(8, 1, 32, 28, 28, 3, 1, 1), &linear(1024, 512, 10)];
    for dev in devices() {
        for precision in precisions(dev) {
            for op in ops {
                let inputs = GemmInputs::random(&mut rng, op.lens());
                let bits = |outputs: Outputs| -> Vec<Vec<u32>> {
                    outputs
                        .into_iter()
                        .map(|(name, v)| {
                            let v = v.unwrap_or_else(|e| panic!("{op:?} {name}: {e}"));
                            v.iter().map(|x| x.to_bits()).collect()
                        })
                        .collect()
                };
                let first = bits(op.run(dev, precision, &inputs));
                let second = bits(op.run(dev, precision, &inputs));
                assert!(
                    first == second,
                    "{} {op:?} {precision}: runs differ",
                    dev.name()
                );
            }
        }
    }
}
