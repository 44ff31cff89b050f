# shellcheck shell=bash
# Sourced, not run: installs the pinned NVRTC (from PyPI, no GPU needed) once into a cache folder
# and puts it on LD_LIBRARY_PATH, so build.rs compiles kernels/*.cu into CUBINs and PTX.
#
# Pinned to CUDA 12.8: a CUDA 12 NVRTC's CUBINs load on every CUDA 12.0+ driver (R525 on, minor
# version compatibility) and on CUDA 13 drivers; 12.8 is the first to build sm_100 and sm_120
# (Blackwell) CUBINs, and its PTX (ISA 8.7) loads on every driver that knows a Blackwell GPU.
# An unpinned install would give a CUDA 13 NVRTC, whose PTX only R580+ drivers load.

NVRTC_PIN="nvidia-cuda-nvrtc-cu12==12.8.*"
NVRTC_DIR="${HANDWRITTEN_NVRTC_DIR:-$HOME/.cache/handwritten/nvrtc-12.8}"
NVRTC_DIR="$(realpath -m "$NVRTC_DIR")"
NVRTC_LIB="$NVRTC_DIR/nvidia/cuda_nvrtc/lib"

if [ ! -e "$NVRTC_LIB/libnvrtc.so.12" ]; then
    echo "installing $NVRTC_PIN into $NVRTC_DIR"
    rm -rf "$NVRTC_DIR.partial"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
        --target "$NVRTC_DIR.partial" "$NVRTC_PIN"
    rm -rf "$NVRTC_DIR"
    mv "$NVRTC_DIR.partial" "$NVRTC_DIR"
fi

# Absolute: build scripts run in the package folder, and the library is found by dlopen.
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# A missing NVRTC would otherwise only warn and build without GPU kernels.
export HANDWRITTEN_REQUIRE_NVRTC=1
