# shellcheck shell=bash
# Sourced, not run: installs the pinned NVRTC (from PyPI, no GPU needed) once into a cache folder
# and puts it on LD_LIBRARY_PATH, so build.rs compiles kernels/*.cu to PTX.
#
# Pinned to CUDA 13.0 because a driver loads PTX only up to its own CUDA version, and the GPU
# machines run a 13.0 driver; an unpinned install would produce PTX they reject.

NVRTC_PIN="nvidia-cuda-nvrtc==13.0.*"
NVRTC_DIR="${HANDWRITTEN_NVRTC_DIR:-$HOME/.cache/handwritten/nvrtc-13.0}"
NVRTC_DIR="$(realpath -m "$NVRTC_DIR")"
NVRTC_LIB="$NVRTC_DIR/nvidia/cu13/lib"

if [ ! -e "$NVRTC_LIB/libnvrtc.so.13" ]; then
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
