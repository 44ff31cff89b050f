#!/usr/bin/env bash
# One training epoch of the reference network, handwritten's cpu device against PyTorch on the
# same machine, interleaved (A B C A B C ...) so that drift in the machine's speed hits all three.
# Prints each run's training seconds, then the medians and the ratios to handwritten.
#
#   tools/compare_cpu_speed.sh [ROUNDS]      (default 2; PYTHON=path/to/python with torch)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
python=${PYTHON:-python3}
cargo build --release -q -p app
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

seconds_of() { awk '/^seconds /{gsub(",", "", $2); print $2}'; }
declare -A runs
for round in $(seq "$rounds"); do
    a=$(./target/release/handwritten train --epochs 1 --device cpu --out "$out/run$round" | seconds_of)
    b=$("$python" tools/pytorch_baseline.py --epochs 1 | seconds_of)
    c=$("$python" tools/pytorch_baseline.py --epochs 1 --fused-adam --flush-denormals | seconds_of)
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
