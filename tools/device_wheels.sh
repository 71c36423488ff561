#!/usr/bin/env bash
# Fetch, on a machine that reaches the package index, what tools/device_check.sh installs on a GPU
# machine that reaches none: the pure-Python wheels the GPU image lacks, for Python 3.12, and
# flash-attn's source release (bench/baselines.py loads its Triton rotary kernel by path; the package's
# compiled extension is not needed). Everything lands in .whl/ (gitignored, never committed; about
# 10 MB), which the device call carries.
#
#   tools/device_wheels.sh            # into .whl/
#   tools/device_wheels.sh DIR        # into DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python=${PYTHON:-python3}
mkdir -p "$dest"
# one version of each (two stop the install on the device); the GPU image has numpy, torch, triton
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" array-api-compat==1.16.0 array-api-strict==2.6.1 liger-kernel==0.8.5
# flash-attn ships no wheel on the index: its source release, metadata read without building CUDA code
FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE "$python" -m pip download --no-deps --no-binary=:all: \
    --no-build-isolation -d "$dest" flash-attn==2.8.3.post2
ls -l "$dest"
