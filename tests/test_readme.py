"""README.md's Python examples run as written (those that import a placeholder package are skipped)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
PLACEHOLDERS = ("my_model", "mypackage")


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 4


# torch's own deprecation warnings, raised inside torch.compile's tracing of autograd.Function
@pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be instantiated")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_example_runs(number: int) -> None:
    code = BLOCKS[number]
    if any(name in code for name in PLACEHOLDERS):
        pytest.skip("imports a placeholder package of the reader's own")
    for framework in ("jax", "torch"):
        if re.search(rf"^import {framework}|^from p_rope.backends import {framework}", code, flags=re.M):
            pytest.importorskip(framework)
    exec(compile(code, f"README.md example {number}", "exec"), {})


ROOT = README.parent
ARCHITECTURE = ROOT / "ARCHITECTURE.md"


def test_architecture_names_files_and_functions_that_exist() -> None:
    """ARCHITECTURE.md's map stays true: every path it names exists, every `file.py::name` (and every
    name it attributes to a file as `name` in `(...)` after it) is defined there."""
    text = ARCHITECTURE.read_text()
    paths = set(re.findall(r"`((?:spec|backends|conformance|bench|tools)/[\w/.]*)`", text))
    assert len(paths) >= 15
    assert [p for p in sorted(paths) if not (ROOT / p.rstrip("/")).exists()] == []
    named = re.findall(r"`((?:spec|backends)/\w+\.py)::(\w+)`", text)
    named += [(path, name) for path, names in re.findall(r"`((?:spec|backends)/\w+\.py)` \(([^)]*)\)", text)
              for name in re.findall(r"`(\w+)`", names)]  # fmt: skip
    assert len(named) >= 8
    missing = [
        f"{p}::{n}" for p, n in named if not re.search(rf"^(def|class) {n}\b|^{n} = ", (ROOT / p).read_text(), re.M)
    ]
    assert missing == []
    for mapping in ('"p_rope" = "spec"', '"p_rope.backends" = "backends"', '"p_rope.conformance" = "conformance"'):
        assert mapping in (ROOT / "pyproject.toml").read_text()
