#!/usr/bin/env bash
# The GPU check, in one command, on a machine with a CUDA GPU and no network (at most 8 minutes):
#
#   1. installs the project from the working tree, plus the wheels carried in .whl/
#      (tools/device_wheels.sh fetches them beforehand; flash-attn's source release among them),
#      into a private folder put first on PYTHONPATH (no pip index, no build isolation);   <= 60 s
#   2. side by side (correctness only): the CUDA slice of the conformance matrix, one process per
#      backend that runs on CUDA (torch, array_api:torch, vendor:torch, jax, array_api:jax,
#      vendor:jax), every dtype, and the CUDA tests (pytest -k cuda; 4 workers where the
#      image has pytest-xdist);                                                            <= 240 s
#      then the matrix of those runs;                                                      <= 30 s
#   3. alone on the GPU: the benchmarks (bench/run.py --device cuda --report-dir), until
#      480 s after the start (a run cut short keeps the cases it finished);                >= 120 s
#
# and writes everything into one output folder:
#
#   OUT_DIR/conformance/<backend>-cuda.json, conformance.md, conformance.json   (step 2)
#   OUT_DIR/tests.txt                                                           (step 2)
#   OUT_DIR/bench/cuda.json, BENCHMARKS-gpu.md                                  (step 3)
#   OUT_DIR/log.txt, OUT_DIR/summary.txt                                        (every step)
#
# and, with --archive FILE, the folder packed as one .tar.gz (the device tool brings back at most 8
# files). Each step has its own time limit; a failing step does not stop the others, but the script
# exits 1 if any failed. Without a CUDA device it fails at once (exit 2).
#
#   tools/device_check.sh [--archive FILE] OUT_DIR     on the GPU machine, from the repository root
#   tools/device_check.sh --dry-run OUT_DIR            the CPU rehearsal: every step, tiny sizes (one
#                                                      backend per framework, --quick cases, two test
#                                                      files, one benchmark case)
#
# Python: $PYTHON (default python3, the GPU image's, with torch, triton, jax, transformers, pytest).
#
# From a session that has the device tool (README.md, "GPUs"): tools/device_wheels.sh here, then
#   run(command="bash tools/device_check.sh --archive $OUT/device-check.tar.gz /tmp/device-check",
#       carry=[".whl"], timeout_s=560)
# then unpack files_at/device-check.tar.gz and copy conformance/*-cuda.json into reports/conformance/
# (then `python -m p_rope.conformance report reports/conformance`), bench/cuda.json into
# reports/bench/ (then `python bench/run.py --render`), and commit.
set -uo pipefail

dry_run=0
archive=""
out_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --archive) archive=${2:?--archive needs a file}; shift ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        -*) echo "device_check: unknown option $1" >&2; exit 2 ;;
        *) out_dir=$1 ;;
    esac
    shift
done
if [ -z "$out_dir" ]; then
    echo "device_check: usage: tools/device_check.sh [--dry-run] [--archive FILE] OUT_DIR" >&2
    exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
python=${PYTHON:-python3}
mkdir -p "$out_dir" || exit 2
out_dir=$(cd "$out_dir" && pwd)
log="$out_dir/log.txt"
summary="$out_dir/summary.txt"
: >"$log"
: >"$summary"
failed=0
export PYTHONUNBUFFERED=1
deadline=$(($(date +%s) + 480))  # the whole check; the benchmarks take what the steps before left
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and torch share the GPU within one process

say() { echo "device_check: $*" | tee -a "$log" >&2; }

# step NAME SECONDS COMMAND...: run with a time limit, its output into the log (or, with STEP_LOG
# set, into that file, for steps run side by side); record the outcome in the summary
step() {
    local name=$1 limit=$2 start rc sink=${STEP_LOG:-$log}
    shift 2
    say "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    if declare -F "$1" >/dev/null; then  # a function of this script (exported): through bash
        timeout --kill-after=10 "$limit" bash -c "$*" >>"$sink" 2>&1
    else
        timeout --kill-after=10 "$limit" "$@" >>"$sink" 2>&1
    fi
    rc=$?
    local took=$(($(date +%s) - start))
    if [ "$rc" -eq 0 ]; then
        echo "ok      $name (${took} s)" >>"$summary"
    else
        [ "$rc" -eq 124 ] && echo "device_check: $name: over its ${limit} s limit" >>"$sink"
        echo "FAILED  $name (exit $rc, ${took} s)" >>"$summary"
    fi
    [ "$sink" = "$log" ] || { tail -n 5 "$sink" >&2; }
    return "$rc"
}

if [ "$dry_run" -eq 1 ]; then
    device=cpu
    say "dry run: every step on the CPU, tiny sizes"
else
    device=cuda
    if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >>"$log" 2>&1; then
        say "FAILED: torch sees no CUDA device (the CPU rehearsal is --dry-run)"
        echo "FAILED  cuda device: torch sees none" >>"$summary"
        exit 2
    fi
    # the card as found (read only: clocks, memory, temperature; its settings are left alone)
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.mem,temperature.gpu \
        --format=csv >>"$log" 2>&1 || true
fi

# 1. install: the project from a copy of its sources (the working tree stays as it is), the wheels
#    in .whl/, flash-attn's Python sources from its source release; all into one private folder
site=$(mktemp -d)
install() {
    local src="$site/src" target="$site/site"
    mkdir -p "$src" "$target"
    # offline with the interpreter's own setuptools; where it has none, pip fetches one (network)
    local offline=(--no-index --no-build-isolation)
    "$python" -c 'import setuptools' 2>/dev/null || offline=()
    cp -r pyproject.toml README.md spec backends conformance "$src/" &&
        rm -rf "$src"/*/__pycache__ &&
        "$python" -m pip install -q "${offline[@]}" --no-deps --no-compile --no-cache-dir --target "$target" "$src" ||
        return 1
    shopt -s nullglob
    local wheels=(.whl/*.whl) sources=(.whl/flash_attn-*.tar.gz)
    shopt -u nullglob
    if [ ${#wheels[@]} -gt 0 ]; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$target" \
            "${wheels[@]}" || return 1
    else
        echo "no wheels in .whl/ (tools/device_wheels.sh): using what the image has"
    fi
    if [ ${#sources[@]} -gt 0 ]; then
        tar -xzf "${sources[0]}" -C "$site" --wildcards '*/flash_attn/*.py' &&
            cp -r "$site"/flash_attn-*/flash_attn "$target/" || return 1
    fi
    PYTHONPATH="$target" "$python" -c 'import p_rope, p_rope.backends.torch, array_api_compat; print("p_rope from", p_rope.__file__)' &&
        { PYTHONPATH="$target" "$python" - <<'PY' || true; }
import importlib.metadata as metadata
import platform

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"

names = ("numpy", "torch", "triton", "jax", "jaxlib", "transformers", "array-api-compat", "pytest-xdist")
print("python", platform.python_version(), *(f"{name} {version(name)}" for name in names))
PY
}
export site python dry_run out_dir
export -f install
step install 60 install || { tail -n 20 "$log" >&2; cat "$summary" >&2; exit 1; }
export PYTHONPATH="$site/site${PYTHONPATH:+:$PYTHONPATH}"

# 2 and 3, side by side (correctness only; 16 cores, one GPU, no preallocation): the CUDA slice of
# the conformance matrix, one process per backend, and the CUDA tests (pytest -k cuda: every test
# parametrized on a CUDA device; without a GPU they all skip, so the dry run checks their collection)
conformance_dir="$out_dir/conformance"
mkdir -p "$conformance_dir"
if [ "$dry_run" -eq 1 ]; then  # one backend per framework, a small sample of the cases
    backends=(torch jax)
    sample=(--quick)
else
    backends=(torch array_api:torch vendor:torch jax array_api:jax vendor:jax)
    sample=()
fi
tests() {
    local files=(tests)
    [ "$dry_run" -eq 1 ] && files=(tests/test_triton.py tests/test_jax_fusion.py)  # collection of two files
    local workers=()
    "$python" -c 'import xdist' 2>/dev/null && workers=(-n 4)
    "$python" -m pytest "${files[@]}" -k cuda -p no:cacheprovider -q -rfEs "${workers[@]}" >"$out_dir/tests.txt" 2>&1
    local rc=$?
    cat "$out_dir/tests.txt"
    [ "$rc" -eq 0 ] || return "$rc"
    if [ "$dry_run" -eq 0 ] && ! tail -n 1 "$out_dir/tests.txt" | grep -q " passed"; then
        echo "no CUDA test ran"
        return 1
    fi
}
export -f tests
parts="$site/parts"
mkdir -p "$parts"
for backend in "${backends[@]}"; do
    STEP_LOG="$parts/conformance-${backend//:/_}.txt" step "conformance $backend" 240 "$python" -m p_rope.conformance \
        run --device "$device" --backend "$backend" "${sample[@]}" --out "$conformance_dir" &
done
STEP_LOG="$parts/tests.txt" step "cuda tests" 240 tests &
wait
cat "$parts"/*.txt >>"$log"
step "conformance matrix" 30 "$python" -m p_rope.conformance report "$conformance_dir"

# 4. the GPU benchmarks: this device's section of BENCHMARKS.md and its JSON
bench_dir="$out_dir/bench"
if [ "$dry_run" -eq 1 ]; then
    bench_args=(--device cpu --quick --only "gemma4-global decode" --reps 1 --sample-ms 1)
else
    bench_args=(--device cuda --reps 5 --sample-ms 20)
fi
bench_limit=$((deadline - $(date +%s)))
[ "$bench_limit" -ge 120 ] || bench_limit=120
step "gpu benchmarks" "$bench_limit" "$python" bench/run.py "${bench_args[@]}" --report-dir "$bench_dir"

rm -rf "$site"
say "summary:"
tee -a "$log" <"$summary" >&2
grep -q "^FAILED" "$summary" && failed=1
if [ -n "$archive" ]; then
    mkdir -p "$(dirname "$archive")" && tar -czf "$archive" -C "$(dirname "$out_dir")" "$(basename "$out_dir")" ||
        failed=1
    say "packed $out_dir into $archive"
fi
exit "$failed"
