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
# flash-attn ships no wheel on the index: its source release, fetched as a file from the index's simple
# page and checked against the sha256 the page gives (pip download would build its metadata, which
# imports torch and needs setuptools and wheel)
"$python" - "$dest" flash-attn 2.8.3.post2 <<'PY'
import hashlib, pathlib, re, sys, urllib.request
dest, name, version = sys.argv[1:]
stem = f"{name.replace('-', '_')}-{version}.tar.gz"
with urllib.request.urlopen(f"https://pypi.org/simple/{name}/", timeout=60) as response:
    page = response.read().decode()
(url, sha256), = [(u, h) for u, h in re.findall(r'href="([^"#]+)#sha256=([0-9a-f]{64})"', page) if u.endswith("/" + stem)]
target = pathlib.Path(dest) / stem
if not target.exists() or hashlib.sha256(target.read_bytes()).hexdigest() != sha256:
    with urllib.request.urlopen(url, timeout=300) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        sys.exit(f"{stem}: sha256 differs from the index's")
    target.write_bytes(data)
print(target)
PY
ls -l "$dest"
