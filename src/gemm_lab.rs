//! The GEMM kernel lab: launches for the four steps of kernels/gemm_lab.cu, from one thread per
//! output element to the tensor-core engine, each computing C = A·Bᵀ with A `[m, k]`, B `[n, k]`
//! and C `[m, n]` row-major. tests/gemm_lab.rs holds each to the reference and
//! `cargo bench --bench ops -- gemm_lab` times them; docs/gemm.md says what each step buys.

use crate::launch::gemm::gemm;
use crate::launch::{KernelArg, Launch};
use crate::{Error, Precision, Result};

/// The naive and tiled steps' blocks: 16x16 threads, one output element each (`LAB_TILE`).
const LAB_TILE: usize = 16;

/// One step of the GEMM kernel's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmStep {
    /// One thread per element of C, reading A and B from global memory.
    Naive,
    /// 16x16 tiles of A and B staged in shared memory, one element of C per thread.
    Tiled,
    /// kernels/gemm.cuh's tile loop on the fp32 SIMT engine: 64x64 tiles, 4x4 register
    /// micro-tiles, double-buffered staging (cp.async from sm_80 on, else through registers).
    Simt,
    /// The same tile loop on the TF32 tensor-core engine (mma.sync m16n8k8).
    Tf32,
}

impl GemmStep {
    /// Every step, plainest first.
    pub const ALL: [GemmStep; 4] = [
        GemmStep::Naive,
        GemmStep::Tiled,
        GemmStep::Simt,
        GemmStep::Tf32,
    ];

    /// `naive`, `tiled`, `simt` or `tf32`: the kernel's name after `gemm_lab_`.
    pub fn name(self) -> &'static str {
        &self.kernel()["gemm_lab_".len()..]
    }

    pub fn kernel(self) -> &'static str {
        match self {
            GemmStep::Naive => "gemm_lab_naive",
            GemmStep::Tiled => "gemm_lab_tiled",
            GemmStep::Simt => "gemm_lab_simt",
            GemmStep::Tf32 => "gemm_lab_tf32",
        }
    }

    /// How the step multiplies: fp32 (one fused multiply-add per product), or on TF32-rounded
    /// operands.
    pub fn precision(self) -> Precision {
        match self {
            GemmStep::Tf32 => Precision::Tf32,
            _ => Precision::Fp32,
        }
    }

    /// The launch of C = A·Bᵀ for pointers `a` (`m·k` floats), `b` (`n·k`) and `c` (`m·n`, written
    /// whole). Refuses sizes whose products the kernels' 32-bit indices cannot reach.
    pub fn launch(
        self,
        a: KernelArg,
        b: KernelArg,
        c: KernelArg,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Launch> {
        for (operand, rows, cols) in [("a", m, k), ("b", n, k), ("c", m, n)] {
            if rows
                .checked_mul(cols)
                .is_none_or(|len| len > i32::MAX as usize)
            {
                return Err(Error::Shape {
                    op: self.kernel(),
                    what: format!(
                        "{operand} [{rows}, {cols}] has more elements than 32-bit indices reach"
                    ),
                });
            }
        }
        let args = vec![a, b, c, int(m), int(n), int(k)];
        Ok(match self {
            GemmStep::Naive | GemmStep::Tiled => Launch {
                kernel: self.kernel(),
                grid: [
                    n.div_ceil(LAB_TILE).max(1) as u32,
                    m.div_ceil(LAB_TILE).max(1) as u32,
                    1,
                ],
                block: [LAB_TILE as u32, LAB_TILE as u32, 1],
                shared_bytes: 0,
                args,
            },
            GemmStep::Simt | GemmStep::Tf32 => gemm(self.kernel(), m, n, args),
        })
    }
}

/// Sizes checked against `i32::MAX` first.
fn int(v: usize) -> KernelArg {
    KernelArg::I32(v as i32)
}
