"""conformance/README.md's worked example of each call convention runs as written and exits 0, where
its library is installed here (skipped, with the reason, where it is not or needs a GPU)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from p_rope.conformance.__main__ import main

README = Path(__file__).resolve().parent.parent / "conformance" / "README.md"
BLOCK = re.search(r"<!-- conventions:begin -->\n```bash\n(.*?)```", README.read_text(), flags=re.S)
COMMANDS = [line for line in (BLOCK.group(1) if BLOCK else "").splitlines() if line.startswith("p-rope-conformance")]
SLOW = ("EngineRotary",)  # builds a position-indexed cache per case


def test_one_command_per_convention():
    conventions = {"paper", "gemma", "hf", "vllm", "flash_attn", "angles", "onnx"}
    assert len(COMMANDS) == len(conventions)
    named = {m for c in COMMANDS for m in re.findall(r"--convention (\w+)", c)}
    assert named <= conventions


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if any(s in c for s in SLOW) else c for c in COMMANDS],
    ids=[c.split("--impl ")[1].split()[0] for c in COMMANDS],
)
def test_readme_command(command: str, capsys):
    args = shlex.split(command)[1:]
    modules = [args[i + 1].split(":")[0] for i, a in enumerate(args) if a in ("--impl", "--rotary")]
    for module in modules:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module.split('.')[0]} is not installed here")
    status = main(args)
    out = capsys.readouterr().out
    assert status == 0, out[-2000:]
    assert "GRADE" in out.splitlines()[-1]
