"""Sessions of the p-RoPE project (README.md lists the two a newcomer runs).

    nox -s conformance            the main job: every backend in its own environment, then the matrix
    nox -s tests                  the test suite (what CI runs)
    nox -s tests_libm             the test suite again on NumPy's baseline SIMD path (CI runs it second)
    nox -s lint typecheck         ruff; mypy
    nox -s golden                 regenerate the golden vectors in memory and fail on drift (-- --write)
    nox -s vendor                 regenerate the single-file backends (-- --check: fail if stale)
    nox -s bench                  BENCHMARKS.md;  nox -s accuracy: reports/accuracy.{md,png}

Devices: conformance and bench run on the CPU unless told otherwise, e.g.
``nox -s conformance -- --device cpu --device cuda`` or P_ROPE_DEVICES=cpu,cuda; a device asked for
and absent is a failure. PyTorch is pinned to the CPU build this project's machines carry
(TORCH below); point pip at another index with PIP_INDEX_URL / PIP_EXTRA_INDEX_URL for CUDA builds.
"""

from __future__ import annotations

import os
import sys

import nox

nox.options.sessions = ["conformance", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
TORCH = os.environ.get("P_ROPE_TORCH", "torch==2.13.0")
JAX = os.environ.get("P_ROPE_JAX", "jax")  # e.g. "jax[cuda12]" or "jax[tpu]" on accelerator runners
KERAS = "keras==3.15.1"  # check's Keras convention (tests/test_check_keras.py); Keras runs on the torch installed
ONNX = ["onnx==1.23.2", "onnxruntime==1.32.0"]  # check's onnx convention (tests/test_check_conventions.py)
# keras-hub's Gemma 4 attention, checked as is (tests/test_check_keras.py): installed without its declared
# requirements (they pull TensorFlow Text), with the two its import needs beside Keras's.
KERAS_HUB, KERAS_HUB_IMPORTS = "keras-hub==0.32.0", ["regex==2026.11.19", "tokenizers==0.23.3"]
# The suite runs on this many worker processes (pytest-xdist); `nox -s tests -- -n 0` runs it in one.
WORKERS = str(min(4, os.cpu_count() or 1))
SOURCES = ["spec", "backends", "conformance", "tools", "bench", "tests", "noxfile.py"]
CONFORMANCE_DIR = "reports/conformance"

# Each conformance environment installs one framework and runs the backends that need it.
CONFORMANCE_GROUPS = {
    "numpy": {
        "install": [".[array-api,conformance]", "array-api-strict>=2.2"],
        "backends": ["reference", "array_api:numpy", "array_api:strict"],
    },
    "jax": {"install": [JAX, ".[jax,conformance]"], "backends": ["jax", "array_api:jax"]},
    "torch": {"install": [TORCH, ".[torch,conformance]"], "backends": ["torch", "array_api:torch"]},
    # The vendored single files run where the project's backends are not installed: only the
    # framework, array-api-compat and the (NumPy-only) reference plus suite that grade them.
    "vendor-jax": {"install": [JAX, "array-api-compat>=1.11", ".[conformance]"], "backends": ["vendor:jax"]},
    "vendor-torch": {
        "install": [TORCH, "array-api-compat>=1.11", ".[conformance]"],
        "backends": ["vendor:torch"],
    },
}


@nox.session(python=PYTHON)
@nox.parametrize("group", list(CONFORMANCE_GROUPS))
def conformance(session: nox.Session, group: str) -> None:
    """Run the conformance suite for one group of backends (all groups: `nox -s conformance`)."""
    spec = CONFORMANCE_GROUPS[group]
    session.notify("conformance_report")  # queued first, so the matrix is printed even when a run fails
    for requirement in spec["install"]:
        session.install(requirement)
    for backend in spec["backends"]:
        session.run(
            "python",
            "-m",
            "p_rope.conformance",
            "run",
            "--backend",
            backend,
            "--out",
            CONFORMANCE_DIR,
            *session.posargs,
        )


@nox.session(python=PYTHON)
def conformance_report(session: nox.Session) -> None:
    """Merge the per-backend results into the matrix (terminal, Markdown, JSON)."""
    session.install(".[conformance]")
    session.run("python", "-m", "p_rope.conformance", "report", CONFORMANCE_DIR)


def install_test_environment(session: nox.Session) -> None:
    """What the tests need: the frameworks, triton (the fused kernel's interpreter tests on the CPU) and
    the libraries check's conventions are tested on (Keras, onnxruntime, keras-hub)."""
    session.install(TORCH)
    session.install(".[jax,torch,conformance,test,triton]", KERAS, *ONNX, *KERAS_HUB_IMPORTS)
    session.install("--no-deps", KERAS_HUB)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite: every backend on every available device, the suite's self-test, vendoring."""
    install_test_environment(session)
    session.run("python", "-m", "pytest", "-n", WORKERS, *session.posargs)


# NumPy dispatches float64 sin, cos, pow, exp and log to SIMD code whose last bits depend on the CPU.
# tests_libm reruns the tests on NumPy's baseline code path (SPEC.md section 10, "Across platforms").
ABOVE_BASELINE = """
try:
    from numpy._core import _multiarray_umath as umath
except ImportError:  # NumPy 1.x
    from numpy.core import _multiarray_umath as umath
print(" ".join(f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)))
"""


@nox.session(python=PYTHON)
def tests_libm(session: nox.Session) -> None:
    """The tests again with NPY_DISABLE_CPU_FEATURES set to every SIMD extension NumPy dispatches to above
    its baseline on this machine (computed here, so any CPU): a second libm path on every CI run."""
    install_test_environment(session)
    output = session.run("python", "-c", ABOVE_BASELINE, silent=True) or ""
    features = output.strip().splitlines()[-1].strip() if output.strip() else ""
    if not features:
        session.log("NumPy reports no SIMD extension above its baseline here: the second pass takes the same path")
    session.log(f"NPY_DISABLE_CPU_FEATURES={features!r}")
    session.run("python", "-m", "pytest", "-n", WORKERS, *session.posargs, env={"NPY_DISABLE_CPU_FEATURES": features})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install(TORCH)  # checked against the real frameworks, as the backends use them
    session.install("mypy>=1.10", ".[jax,torch,array-api,conformance]")
    session.run("mypy", "spec", "backends", "conformance", "tools", "bench")


@nox.session(python=PYTHON)
def golden(session: nox.Session) -> None:
    """Check the golden vectors against a fresh generation (`-- --write` rewrites them)."""
    session.install(".[conformance]")
    session.run("python", "-m", "p_rope.conformance", "golden", *(session.posargs or ["--check"]))


@nox.session(python=False)
def vendor(session: nox.Session) -> None:
    """Regenerate backends/vendor/p_rope_*.py (`-- --check` fails if they are stale)."""
    session.run(sys.executable, "tools/vendor.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against baselines measured in the same run: BENCHMARKS.md, reports/bench/<device>.json
    (`-- --quick`, `-- --device cuda`, `-- --render`: the options are in bench/run.py)."""
    session.install(TORCH)
    session.install(".[jax,torch,bench]")
    session.run("python", "bench/run.py", *session.posargs)


def _ecosystem_registry():
    """conformance/ecosystem/__init__.py (stdlib only) loaded by path: the libraries and their pins."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ecosystem_registry", "conformance/ecosystem/__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


ECOSYSTEM = _ecosystem_registry()
ECOSYSTEM_RESULTS = "reports/ecosystem/results"  # committed: one summary per library
ECOSYSTEM_FRESH = "build/ecosystem-check"  # `-- --check`: a fresh run, compared with the committed report


def _cuda_present() -> bool:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def _ecosystem_environments() -> dict[str, list]:
    """nox parameter -> libraries: one environment per library; without CUDA, the GPU-only libraries share
    one bare environment that records them as not run."""
    groups = ECOSYSTEM.groups()
    if _cuda_present():
        return groups
    cpu = {name: libs for name, libs in groups.items() if not libs[0].needs_cuda}
    return cpu | {"cuda-only": [lib for libs in groups.values() for lib in libs if lib.needs_cuda]}


@nox.session(python=PYTHON)
@nox.parametrize("library", list(_ecosystem_environments()))
def ecosystem(session: nox.Session, library: str) -> None:
    """Grade one public library in its own environment at its pins (all of them: `nox -s ecosystem`;
    `-- --check` compares a fresh run with the committed reports/ecosystem.json instead of rewriting it)."""
    libs = _ecosystem_environments()[library]
    check = "--check" in session.posargs
    session.notify("ecosystem_report", ["--check"] if check else [])
    constraints = os.path.join(session.create_tmp(), "constraints.txt")
    with open(constraints, "w") as handle:
        handle.write(ECOSYSTEM.TORCH + "\n")  # nothing may replace the CPU build of torch
    if not libs[0].needs_cuda or _cuda_present():  # GPU-only libraries are installed where they can run
        if ECOSYSTEM.TORCH in libs[0].requirements:
            session.install(ECOSYSTEM.TORCH)
        session.install("-c", constraints, *libs[0].requirements)
        if libs[0].no_deps:
            session.install("--no-deps", *libs[0].no_deps)
    session.install("-c", constraints, ".[conformance]")
    out, repro = (f"{ECOSYSTEM_FRESH}/results", f"{ECOSYSTEM_FRESH}/repro") if check else (ECOSYSTEM_RESULTS, "")
    for lib in libs:
        session.run(
            "python", "-m", "p_rope.conformance.ecosystem", "run", lib.key, "--out", out,
            *(["--repro-dir", repro] if repro else []),
        )  # fmt: skip


@nox.session(python=PYTHON)
def ecosystem_report(session: nox.Session) -> None:
    """Merge the libraries' results into reports/ecosystem.{md,json} (`-- --check`: fail on drift)."""
    session.install(".[conformance]")
    if "--check" in session.posargs:
        session.run("python", "-m", "p_rope.conformance.ecosystem", "drift", f"{ECOSYSTEM_FRESH}/results")
    else:
        session.run("python", "-m", "p_rope.conformance.ecosystem", "report", ECOSYSTEM_RESULTS)


@nox.session(python=PYTHON)
def accuracy(session: nox.Session) -> None:
    """Error against position for every backend and the float32-angle baseline; reports/accuracy.*"""
    session.install(TORCH)
    session.install(".[jax,torch,conformance,plot,bench]")
    session.run("python", "bench/accuracy.py", *session.posargs)
