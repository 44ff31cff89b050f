#!/usr/bin/env bash
# Runs the kernels' tests, training runs, the benches, the sanitizers and PyTorch on a real GPU,
# and ends with one summary table.
#
#   scripts/gpu-check.sh build           on a machine with cargo: release binaries into .gpu/,
#                                        and packed as .gpu.tar.xz
#   scripts/gpu-check.sh run [LOG_DIR]   on the GPU machine (no cargo needed), from the repository
#                                        root with .gpu/ (or .gpu.tar.xz) copied beside it; with LOG_DIR, the
#                                        output goes to LOG_DIR/gpu-check.log and every raw
#                                        figure stays in LOG_DIR (see scripts/gpu_summary.py)
#
# `run` needs bash, coreutils and python3; nvidia-smi, nsys or ncu, compute-sanitizer and PyTorch
# are used where installed. It selects the cuda device (HANDWRITTEN_TEST_DEVICE=cuda, which the
# device and kernel tests honour; they default to the emulator), then, each step within its own
# time limit:
#   - runs every test binary: the root package's unit tests (the embedded PTX), its op suite
#     (tests/ops: every op against the reference), GEMM lab and device tests, and nn's devices
#     test (training steps agree with the cpu device);
#   - trains HANDWRITTEN_GPU_EPOCHS epochs (default 3) in tf32 replaying the step graph: the
#     first epoch's time and test accuracy, and the training time until test_acc first reaches
#     0.99;
#   - benches the training step at batch 64: tf32 and fp32, graph and eager;
#   - profiles a short training run with nsys, else ncu, for each kernel's share of the step;
#     with neither, benches each op at batch 64 instead;
#   - trains one epoch of the same network in PyTorch (tools/pytorch_baseline.py --device cuda):
#     eager, eager with fused Adam, the whole step as one CUDA graph, and torch.compile with
#     mode max-autotune (last: compiling takes minutes);
#   - runs the tests under compute-sanitizer's memcheck, racecheck and synccheck.
# It starts no step that would not fit in HANDWRITTEN_GPU_CHECK_SECONDS (default 450) and lists
# those it skipped. It ends with the table of scripts/gpu_summary.py. The exit status is non-zero
# if any step failed.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."

GPU_DIR=.gpu

# Prints "target-name kind executable" for each executable in cargo's JSON messages on stdin.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable"):
        print(message["target"]["name"], message["target"]["kind"][0], message["executable"])
'
}

build() {
    source scripts/nvrtc-env.sh
    rm -rf "$GPU_DIR"
    mkdir -p "$GPU_DIR/tests" "$GPU_DIR/benches"
    # The unit tests (embedded PTX) and every test binary that runs kernels on the chosen device:
    # the op suite, the GEMM lab, and the device runtime's own tests.
    cargo test -p kernels --release --no-run --message-format=json | executables |
        while read -r name kind executable; do
            case "$kind:$name" in
                lib:kernels | test:ops | test:gemm_lab | test:device_*) cp "$executable" "$GPU_DIR/tests/$name" ;;
            esac
        done
    # nn's devices test runs the trainer's step graph (capture, replay) on the chosen device.
    cargo test -p nn --release --no-run --test devices --message-format=json | executables |
        while read -r name kind executable; do
            if [ "$kind:$name" = test:devices ]; then cp "$executable" "$GPU_DIR/tests/nn_devices"; fi
        done
    cargo bench -p kernels -p nn --no-run --message-format=json | executables |
        while read -r name kind executable; do
            if [ "$kind" = bench ]; then cp "$executable" "$GPU_DIR/benches/$name"; fi
        done
    cargo build -p app --release --message-format=json | executables |
        while read -r name kind executable; do
            if [ "$name" = handwritten ]; then cp "$executable" "$GPU_DIR/handwritten"; fi
        done
    # Only what a crash report needs: the copy to a GPU machine may be limited in size.
    strip --strip-debug "$GPU_DIR"/tests/* "$GPU_DIR"/benches/* "$GPU_DIR"/handwritten
    ls -l "$GPU_DIR"/tests "$GPU_DIR"/benches "$GPU_DIR"/handwritten
    du -sh "$GPU_DIR"
    # Every binary embeds the kernels' CUBINs for seven architectures: packed, they travel in a
    # quarter of the space. `run` unpacks the archive where .gpu/ is missing.
    tar -cJf "$GPU_DIR.tar.xz" "$GPU_DIR"
    du -sh "$GPU_DIR.tar.xz"
}

run() {
    local log_dir=${1:-} raw
    if [ ! -d "$GPU_DIR" ] && [ -f "$GPU_DIR.tar.xz" ]; then
        tar -xJf "$GPU_DIR.tar.xz"
    fi
    if [ -n "$log_dir" ]; then
        mkdir -p "$log_dir"
        raw=$(cd "$log_dir" && pwd)
        exec > >(tee "$raw/gpu-check.log") 2>&1
    else
        raw=$(mktemp -d)
        trap 'rm -rf "$raw"' EXIT
    fi
    : > "$raw/steps.tsv"
    export HANDWRITTEN_TEST_DEVICE=cuda CRITERION_HOME="$raw/criterion"
    local epochs=${HANDWRITTEN_GPU_EPOCHS:-3}
    local deadline=$((SECONDS + ${HANDWRITTEN_GPU_CHECK_SECONDS:-450}))
    local failures=0

    # record NAME RESULT SECONDS: a line of steps.tsv, which the summary reads.
    record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$raw/steps.tsv"; }

    # step NAME NEEDS LIMIT COMMAND...: runs COMMAND for at most LIMIT seconds and never past the
    # deadline, if NEEDS seconds are left; its output is shown and kept in $raw/NAME.log (spaces
    # as dashes).
    step() {
        local name=$1 needs=$2 limit=$3
        shift 3
        local left=$((deadline - SECONDS))
        if ((left < needs)); then
            record "$name" "skipped (needs ${needs} s, ${left} s left)" 0
            return
        fi
        if ((limit > left)); then limit=$left; fi
        echo "=== $name"
        local start=$SECONDS status=0
        timeout "$limit" "$@" 2>&1 | tee "$raw/${name// /-}.log" || status=$?
        local took=$((SECONDS - start))
        if ((status == 0)); then
            record "$name" ok "$took"
        elif ((status == 124)); then
            record "$name" "failed (timed out after ${took} s)" "$took"
            failures=$((failures + 1))
        else
            record "$name" "failed (status $status)" "$took"
            failures=$((failures + 1))
        fi
    }

    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader |
            tee "$raw/gpu.txt" || true
    fi
    local test tool report setting
    # Cheapest and most telling first.
    for test in "$GPU_DIR"/tests/*; do
        step "test $(basename "$test")" 10 120 "$test"
    done
    step train 20 180 "$GPU_DIR/handwritten" train --device cuda --precision tf32 \
        --epochs "$epochs" --out "$raw/train"
    step "bench step" 30 120 "$GPU_DIR/benches/step" --bench '^cuda/step/train_b64_'

    # A short tf32 training run, profiled: the step's kernels and a 64-image evaluation.
    local short_run=("$GPU_DIR/handwritten" train --device cuda --precision tf32 --epochs 1
        --test-limit 64 --out "$raw/profile-run")
    if command -v nsys > /dev/null; then
        # Kernels inside the replayed graph are traced one by one only with node tracing.
        step profile 30 120 nsys profile --cuda-graph-trace=node --stats=false \
            --force-overwrite=true --output "$raw/profile" "${short_run[@]}" --train-limit 6400
        # The report's name before nsys 2023.3 was gpukernsum.
        for report in cuda_gpu_kern_sum gpukernsum; do
            if timeout 120 nsys stats --report "$report" --format csv --force-export=true \
                --output "$raw/profile" "$raw/profile.nsys-rep" > /dev/null 2>&1 &&
                [ -s "$raw/profile_$report.csv" ]; then
                mv "$raw/profile_$report.csv" "$raw/profile-nsys.csv"
                break
            fi
        done
    elif command -v ncu > /dev/null; then
        # ncu replays each kernel: fewer steps, and a cap on the kernels it profiles.
        step profile 30 120 ncu --csv --metrics gpu__time_duration.sum --launch-count 1500 \
            --log-file "$raw/profile-ncu.csv" "${short_run[@]}" --train-limit 1280
    else
        record profile "not installed (nsys, ncu)" 0
    fi
    if [ ! -s "$raw/profile-nsys.csv" ] && [ ! -s "$raw/profile-ncu.csv" ]; then
        step "bench ops" 30 120 "$GPU_DIR/benches/ops" --bench '^cuda/(.*/b64|adam/.*)$'
    fi

    local pytorch=(python3 tools/pytorch_baseline.py --device cuda --epochs 1) has_torch=yes
    if ! python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2> /dev/null; then
        has_torch=no
        for setting in eager fused-adam cuda-graph compile; do
            record "pytorch $setting" "not installed (python3 with PyTorch and CUDA)" 0
        done
    fi
    if [ "$has_torch" = yes ]; then
        step "pytorch eager" 20 90 "${pytorch[@]}"
        step "pytorch fused-adam" 20 90 "${pytorch[@]}" --fused-adam
        step "pytorch cuda-graph" 20 90 "${pytorch[@]}" --cuda-graph --fused-adam
    fi

    if command -v compute-sanitizer > /dev/null; then
        for tool in memcheck racecheck synccheck; do
            for test in "$GPU_DIR"/tests/*; do
                # The library's unit tests make no CUDA call, which compute-sanitizer counts as
                # a failure ("terminated before first instrumented API call").
                if [ "$(basename "$test")" = kernels ]; then continue; fi
                step "$tool $(basename "$test")" 20 150 compute-sanitizer --tool "$tool" \
                    --error-exitcode 1 "$test" --test-threads=1
            done
        done
    else
        record compute-sanitizer "not installed" 0
    fi

    # max-autotune benchmarks many kernels while it compiles: the longest step, so the last.
    if [ "$has_torch" = yes ]; then
        step "pytorch compile" 120 300 "${pytorch[@]}" --compile --fused-adam
    fi

    echo "=== summary"
    if command -v python3 > /dev/null; then
        python3 scripts/gpu_summary.py "$raw"
    else
        echo "no summary table: python3 is not installed; the raw figures are in $raw"
    fi
    ((failures == 0))
}

case "${1:-}" in
    build) build ;;
    run) run "${2:-}" ;;
    *)
        echo "usage: $0 build | run [LOG_DIR]   (build where cargo is, run on the GPU machine)" >&2
        exit 2
        ;;
esac
