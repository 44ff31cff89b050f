#!/usr/bin/env bash
# One training epoch of the reference network, handwritten's cpu device against PyTorch on the
# same machine, interleaved (A B C A B C ...) so that drift in the machine's speed hits all three.
# Prints each run's training seconds, then the medians and the ratios to handwritten.
#
#   tools/compare_cpu_speed.sh [--isa avx2] [ROUNDS]   (default 2; PYTHON=path/to/python with torch)
#
# --isa avx2: both on AVX2 alone, on a CPU that has more: handwritten with HANDWRITTEN_CPU_ISA=avx2,
# PyTorch with MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 (its
# BLAS, its convolutions and its own vectorised ops).
set -euo pipefail
cd "$(dirname "$0")/.."
isa=
if [ "${1:-}" = --isa ]; then
    isa=${2:?"--isa needs a value: avx2"}
    [ "$isa" = avx2 ] || { echo "--isa $isa: expected avx2" >&2; exit 2; }
    shift 2
fi
rounds=${1:-2}
python=${PYTHON:-python3}
ours_env=() torch_env=()
if [ "$isa" = avx2 ]; then
    ours_env=(HANDWRITTEN_CPU_ISA=avx2)
    torch_env=(MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)
fi
cargo build --release -q -p app
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

seconds_of() { awk '/^seconds /{gsub(",", "", $2); print $2}'; }
declare -A runs
for round in $(seq "$rounds"); do
    a=$(env "${ours_env[@]}" ./target/release/handwritten train --epochs 1 --device cpu \
        --out "$out/run$round" | seconds_of)
    b=$(env "${torch_env[@]}" "$python" tools/pytorch_baseline.py --epochs 1 | seconds_of)
    c=$(env "${torch_env[@]}" "$python" tools/pytorch_baseline.py --epochs 1 --fused-adam \
        --flush-denormals | seconds_of)
    runs[handwritten]+="$a " runs[pytorch]+="$b " runs[pytorch_best]+="$c "
    echo "round $round: handwritten $a s, pytorch $b s, pytorch fused Adam + flush-to-zero $c s"
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ours=$(echo "${runs[handwritten]}" | median)
for name in handwritten pytorch pytorch_best; do
    m=$(echo "${runs[$name]}" | median)
    printf '%-13s runs: %s median %6.1f s  (%.2fx handwritten)\n' "$name" "${runs[$name]}" "$m" \
        "$(echo "$m / $ours" | bc -l)"
done
