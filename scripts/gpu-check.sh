#!/usr/bin/env bash
# Runs the kernels' tests, a short training run and the benches on a real GPU.
#
#   scripts/gpu-check.sh build   on a machine with cargo: release binaries into .gpu/
#   scripts/gpu-check.sh run     on the GPU machine (no cargo needed), from the repository root
#                                with .gpu/ copied beside it
#
# `run` selects the cuda device (HANDWRITTEN_TEST_DEVICE=cuda, which the device and kernel tests
# honour; they default to the emulator), runs each test binary, trains for one epoch
# (HANDWRITTEN_GPU_TRAIN_ARGS), runs the benches, then the tests again under compute-sanitizer's
# memcheck and racecheck where it is installed. Every step has a time limit and the whole run stops starting steps after
# HANDWRITTEN_GPU_CHECK_SECONDS (default 450; skipped steps are listed). The exit status is
# non-zero if any step failed. If $OUT is set, the log is also written to $OUT/gpu-check.log.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."

GPU_DIR=.gpu
TRAIN_ARGS=${HANDWRITTEN_GPU_TRAIN_ARGS:-train --device cuda --epochs 1}

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
    cargo bench -p kernels --no-run --message-format=json | executables |
        while read -r name kind executable; do
            if [ "$kind" = bench ]; then cp "$executable" "$GPU_DIR/benches/$name"; fi
        done
    cargo build -p app --release --message-format=json | executables |
        while read -r name kind executable; do
            if [ "$name" = handwritten ]; then cp "$executable" "$GPU_DIR/handwritten"; fi
        done
    # Only what a crash report needs: the carry to the GPU machine is limited.
    strip --strip-debug "$GPU_DIR"/tests/* "$GPU_DIR"/benches/* "$GPU_DIR"/handwritten
    ls -l "$GPU_DIR"/tests "$GPU_DIR"/benches "$GPU_DIR"/handwritten
    du -sh "$GPU_DIR"
}

run() {
    if [ -n "${OUT:-}" ]; then
        exec > >(tee "$OUT/gpu-check.log") 2>&1
    fi
    export HANDWRITTEN_TEST_DEVICE=cuda
    local deadline=$((SECONDS + ${HANDWRITTEN_GPU_CHECK_SECONDS:-450}))
    local results=()
    local failures=0

    # step NAME LIMIT_SECONDS COMMAND...: runs one step within its limit and the overall deadline.
    step() {
        local name=$1 limit=$2
        shift 2
        local left=$((deadline - SECONDS))
        if ((left < 10)); then
            results+=("skipped  $name (out of time)")
            return
        fi
        if ((limit > left)); then limit=$left; fi
        echo "=== $name"
        local start=$SECONDS status=0
        timeout "$limit" "$@" || status=$?
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
    local test bench tool
    for test in "$GPU_DIR"/tests/*; do
        step "test $(basename "$test")" 120 "$test"
    done
    # shellcheck disable=SC2086 # the arguments are meant to split
    step "train one epoch: handwritten $TRAIN_ARGS" 180 "$GPU_DIR/handwritten" $TRAIN_ARGS
    for bench in "$GPU_DIR"/benches/*; do
        step "bench $(basename "$bench")" 150 "$bench" --bench
    done
    if command -v compute-sanitizer > /dev/null; then
        for tool in memcheck racecheck; do
            for test in "$GPU_DIR"/tests/*; do
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
    run) run ;;
    *)
        echo "usage: $0 build|run (build where cargo is, run on the GPU machine)" >&2
        exit 2
        ;;
esac
