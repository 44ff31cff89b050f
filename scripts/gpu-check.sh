#!/usr/bin/env bash
# Runs the kernels' tests, a one-epoch training run and the benches on a real GPU.
#
#   scripts/gpu-check.sh build           on a machine with cargo: release binaries into .gpu/
#   scripts/gpu-check.sh run [LOG_DIR]   on the GPU machine (no cargo needed), from the repository
#                                        root with .gpu/ copied beside it; with LOG_DIR, the
#                                        output also goes to LOG_DIR/gpu-check.log
#
# `run` selects the cuda device (HANDWRITTEN_TEST_DEVICE=cuda, which the device and kernel tests
# honour; they default to the emulator), then, each step within its own time limit:
#   - runs every test binary: the root package's unit tests (the embedded PTX), its device and
#     kernel tests, and nn's devices test (training steps agree with the cpu device);
#   - trains for one epoch (`handwritten $HANDWRITTEN_GPU_TRAIN_ARGS`, default
#     `train --device cuda --epochs 1`) and puts its time and accuracy in the summary;
#   - runs the benches whose names match HANDWRITTEN_GPU_BENCH_FILTER (default `cuda/`, the cuda
#     device's; empty for every device's);
#   - runs the tests again under compute-sanitizer's memcheck, racecheck and synccheck, where it
#     is installed.
# It starts no step after HANDWRITTEN_GPU_CHECK_SECONDS (default 450) and lists those it skipped.
# The exit status is non-zero if any step failed.
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
    # The unit tests (embedded PTX) and every test binary that runs kernels on the chosen device.
    cargo test -p kernels --release --no-run --message-format=json | executables |
        while read -r name kind executable; do
            case "$kind:$name" in
                lib:kernels | test:device_* | test:kernels_*) cp "$executable" "$GPU_DIR/tests/$name" ;;
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
}

run() {
    local log_dir=${1:-}
    if [ -n "$log_dir" ]; then
        mkdir -p "$log_dir"
        exec > >(tee "$log_dir/gpu-check.log") 2>&1
    fi
    local train_args bench_args=(--bench)
    read -r -a train_args <<< "${HANDWRITTEN_GPU_TRAIN_ARGS:-train --device cuda --epochs 1}"
    local bench_filter=${HANDWRITTEN_GPU_BENCH_FILTER-cuda/}
    if [ -n "$bench_filter" ]; then bench_args+=("$bench_filter"); fi
    export HANDWRITTEN_TEST_DEVICE=cuda
    local deadline=$((SECONDS + ${HANDWRITTEN_GPU_CHECK_SECONDS:-450}))
    step_output=$(mktemp)
    trap 'rm -f "$step_output"' EXIT
    local results=()
    local failures=0

    # step NAME LIMIT_SECONDS COMMAND...: runs one step within its limit and the overall deadline;
    # its output is shown and kept in $step_output until the next step.
    step() {
        local name=$1 limit=$2
        shift 2
        local left=$((deadline - SECONDS))
        : > "$step_output"
        if ((left < 10)); then
            results+=("skipped  $name (out of time)")
            return
        fi
        if ((limit > left)); then limit=$left; fi
        echo "=== $name"
        local start=$SECONDS status=0
        timeout "$limit" "$@" 2>&1 | tee "$step_output" || status=$?
        local took=$((SECONDS - start))
        if ((status == 0)); then
            results+=("ok       $name (${took} s)")
        else
            results+=("FAILED   $name (status $status after ${took} s)")
            failures=$((failures + 1))
        fi
    }

    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    # Cheapest and most telling first; the sanitizers take what time is left.
    local test bench tool figures
    for test in "$GPU_DIR"/tests/*; do
        step "test $(basename "$test")" 120 "$test"
    done
    step "train: handwritten ${train_args[*]}" 180 "$GPU_DIR/handwritten" "${train_args[@]}"
    # The trainer's last lines: test loss and accuracy, then seconds and images per second.
    while read -r figures; do
        results+=("         $figures")
    done < <(grep -E '^(test_loss|seconds) ' "$step_output")
    for bench in "$GPU_DIR"/benches/*; do
        step "bench $(basename "$bench") ${bench_args[*]}" 150 "$bench" "${bench_args[@]}"
    done
    if command -v compute-sanitizer > /dev/null; then
        for tool in memcheck racecheck synccheck; do
            for test in "$GPU_DIR"/tests/*; do
                # The library's unit tests make no CUDA call, which compute-sanitizer counts as
                # a failure ("terminated before first instrumented API call").
                if [ "$(basename "$test")" = kernels ]; then continue; fi
                step "$tool $(basename "$test")" 150 compute-sanitizer --tool "$tool" \
                    --error-exitcode 1 "$test" --test-threads=1
            done
        done
    else
        results+=("skipped  compute-sanitizer (not installed)")
    fi

    echo "=== summary"
    printf '%s\n' "${results[@]}"
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
