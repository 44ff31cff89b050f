//! Prints what this build carries for GPUs: the NVRTC, the CUBINs and PTX of each kernel file,
//! and ptxas's report of every kernel's registers, spills, stack and static shared memory on
//! every architecture, as the Markdown tables README.md shows.
//!
//! `cargo run --release --example gpu_code` (with NVRTC on LD_LIBRARY_PATH at build time, as
//! `source scripts/nvrtc-env.sh` arranges).

use std::collections::BTreeMap;

use kernels::gpu_arch;

fn main() {
    println!("{}", gpu_arch::carried());
    let archs = gpu_arch::cubin_archs();
    if archs.is_empty() {
        return;
    }
    // kernel -> arch -> report
    let mut table: BTreeMap<&str, BTreeMap<u32, gpu_arch::KernelResources>> = BTreeMap::new();
    for r in gpu_arch::kernel_resources() {
        if !r.kernel.starts_with("selftest_") {
            table.entry(r.kernel).or_default().insert(r.arch, *r);
        }
    }
    println!();
    println!("Registers per thread (static shared memory in bytes, where any), per CUBIN:");
    println!();
    let header: Vec<String> = archs.iter().map(|a| format!("sm_{a}")).collect();
    println!("| kernel | {} |", header.join(" | "));
    println!("| --- |{}", " ---: |".repeat(archs.len()));
    for (kernel, by_arch) in &table {
        let cells: Vec<String> = archs
            .iter()
            .map(|arch| match by_arch.get(arch) {
                None => "–".to_string(),
                Some(r) if r.shared_bytes > 0 => format!("{} ({})", r.registers, r.shared_bytes),
                Some(r) => r.registers.to_string(),
            })
            .collect();
        println!("| `{kernel}` | {} |", cells.join(" | "));
    }
    let reports = gpu_arch::kernel_resources();
    let spills = reports
        .iter()
        .filter(|r| r.spill_stores + r.spill_loads > 0)
        .count();
    let stacks = reports.iter().filter(|r| r.stack_bytes > 0).count();
    println!();
    println!(
        "{} reports: {spills} with spills, {stacks} with a stack frame.",
        reports.len()
    );
}
