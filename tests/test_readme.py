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
