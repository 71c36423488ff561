"""conformance/README.md's worked example of each call convention runs as written and exits 0, where
its library is installed here (skipped, with the reason, where it is not or needs a GPU)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from p_rope.conformance.__main__ import main

README = Path(__file__).resolve().parent.parent / "conformance" / "README.md"
BLOCK = re.search(r"<!-- conventions:begin -->\n```bash\n(.*?)```", README.read_text(), flags=re.S)
COMMAND = re.compile(r"^((?:[A-Z_]+=\S+ )*)p-rope-conformance ")  # environment assignments, then the command
COMMANDS = [line for line in (BLOCK.group(1) if BLOCK else "").splitlines() if COMMAND.match(line)]
SLOW = ("EngineRotary",)  # builds a position-indexed cache per case


def test_one_command_per_convention():
    conventions = {"paper", "gemma", "hf", "vllm", "flash_attn", "angles", "onnx", "keras"}
    assert len(COMMANDS) == len(conventions)
    named = {m for c in COMMANDS for m in re.findall(r"--convention (\w+)", c)}
    assert named <= conventions


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if any(s in c for s in SLOW) else c for c in COMMANDS],
    ids=[c.split("--impl ")[1].split()[0] for c in COMMANDS],
)
def test_readme_command(command: str, capsys, monkeypatch):
    words = shlex.split(command)
    environment = dict(w.split("=", 1) for w in words[: words.index("p-rope-conformance")])
    args = words[words.index("p-rope-conformance") + 1 :]
    modules = [args[i + 1].split(":")[0] for i, a in enumerate(args) if a in ("--impl", "--rotary")]
    for module in modules:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module.split('.')[0]} is not installed here")
    backend = environment.get("KERAS_BACKEND")
    if backend is not None and "keras" in sys.modules and sys.modules["keras"].backend.backend() != backend:
        pytest.skip(f"keras was imported here with another backend than KERAS_BACKEND={backend}")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    status = main(args)
    out = capsys.readouterr().out
    assert status == 0, out[-2000:]
    assert "GRADE" in out.splitlines()[-1]
