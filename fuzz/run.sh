#!/usr/bin/env bash
# Fuzzes one target with AFL++ on stable Rust: fuzz/run.sh idx|checkpoint [SECONDS]
#
# Needs AFL++ (Debian: apt-get install afl++). The target is built with rustc's SanitizerCoverage
# pass and linked with AFL++'s coverage runtime; afl-fuzz then runs it from the seeds in
# fuzz/seeds/TARGET. Crashes land in fuzz/out/TARGET/default/crashes.
set -euo pipefail
target=${1:?usage: fuzz/run.sh idx|checkpoint [SECONDS]}
seconds=${2:-600}
cd "$(dirname "$0")"
runtime=${AFL_RUNTIME:-/usr/lib/afl/afl-compiler-rt.o}
[ -f "$runtime" ] || { echo "AFL++'s $runtime not found: install afl++" >&2; exit 1; }
export RUSTFLAGS="-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 \
  -C llvm-args=-sanitizer-coverage-trace-pc-guard -C llvm-args=-sanitizer-coverage-prune-blocks=0 \
  -C link-arg=$runtime"
CARGO_TARGET_DIR=target cargo build --release --bin "$target"
mkdir -p "out/$target"
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
# 4 GiB of address space: the readers' own bounds (1,000,000 records, 1 GiB checkpoints) fit.
exec afl-fuzz -V "$seconds" -m 4096 -t 2000 -i "seeds/$target" -o "out/$target" \
  -- "target/release/$target"
