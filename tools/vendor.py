"""Generate the single-file backends in backends/vendor/ (``nox -s vendor``).

A backend module imports the project's shared code explicitly, in ``from p_rope... import ...``
statements whose first line ends with ``# vendor: inline``. The vendored file of a backend holds the
top-level definitions reachable from that backend's public names (its ``__all__``), taken from the
backend and from every module it inlines (recursively), and nothing else:

* a definition (function, class, assignment, or an ``if``/``try`` block that binds names) is kept when
  a kept definition, or a public name, refers to it; names resolve as Python resolves them, in the
  module that uses them (its own top-level definitions, else what it imports with the marker);
* any other top-level statement (``f.defvjp(...)``, ``table.update(...)``), and a definition whose
  decorator names a kept definition (``@f.defjvp``), is kept when it refers to a kept definition; an
  import is kept when a kept statement uses a name it binds, and written once;
* module docstrings, ``from __future__`` lines, the marked imports and the inlined modules'
  ``__all__`` are dropped; comments directly above a kept statement stay with it.

Two kept definitions of one name in different modules are an error, so the file means exactly what
the package means.

    python tools/vendor.py            # (re)write backends/vendor/p_rope_*.py
    python tools/vendor.py --check    # exit 1 if a committed file differs from a fresh build
    python tools/vendor.py --out DIR  # write them into DIR instead
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"p_rope.backends": ROOT / "backends", "p_rope": ROOT / "spec"}  # pyproject's package-dir
BACKENDS = {
    "p_rope_array_api.py": "p_rope.backends.array_api",
    "p_rope_jax.py": "p_rope.backends.jax",
    "p_rope_torch.py": "p_rope.backends.torch",
}
OUT_DIR = ROOT / "backends" / "vendor"
MARKER = "# vendor: inline"


class VendorError(RuntimeError):
    pass


@dataclass
class Statement:
    """One top-level statement of a module: its source lines and the names it binds and uses."""

    module: str
    node: ast.stmt
    lines: list[str]
    binds: set[str]
    uses: set[str]
    is_import: bool


@dataclass
class Module:
    name: str
    path: Path
    docstring: str | None
    public: list[str]
    inlined: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)
    statements: list[Statement] = field(default_factory=list)


def module_path(name: str) -> Path:
    """The source file of a project module, through pyproject's package-dir mapping."""
    for package, folder in PACKAGE_DIRS.items():
        if name == package or name.startswith(package + "."):
            rest = name[len(package) :].lstrip(".").split(".") if name != package else []
            base = folder.joinpath(*rest)
            for path in (base.with_suffix(".py"), base / "__init__.py"):
                if rest and path.exists():
                    return path
    raise VendorError(f"cannot inline {name!r}: not a module of the project")


def _bound_names(node: ast.stmt) -> set[str]:
    """Names a top-level statement binds in the module namespace."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    names: set[str] = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
            names.add(inner.id)
        elif isinstance(inner, (ast.Import, ast.ImportFrom)):
            names |= _bound_names(inner)
        elif isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and inner is not node:
            names.add(inner.name)
    return names


def _used_names(node: ast.stmt) -> set[str]:
    """Every name a statement reads (conservatively: also names that a function body binds locally)."""
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store)}
    names |= {n.target.id for n in ast.walk(node) if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)}
    return names


def _segment(lines: list[str], node: ast.stmt) -> list[str]:
    """The statement's source lines, decorators included, with the comment lines directly above it."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    return lines[first : node.end_lineno or node.lineno]


def load(name: str) -> Module:
    path = module_path(name)
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    docstring = ast.get_docstring(tree, clean=False)
    module = Module(name, path, docstring, [])
    for index, node in enumerate(tree.body):
        if index == 0 and docstring is not None:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("p_rope"):
            if not lines[node.lineno - 1].rstrip().endswith(MARKER):
                raise VendorError(f"{path}:{node.lineno}: import of {node.module} lacks '{MARKER}'")
            module_path(node.module or "")  # must be a project module
            for alias in node.names:
                if alias.asname not in (None, alias.name):
                    raise VendorError(f"{path}:{node.lineno}: '{alias.name} as {alias.asname}' cannot be inlined")
                module.inlined[alias.name] = (node.module or "", alias.name)
            continue
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            module.public = list(ast.literal_eval(node.value))
        is_import = isinstance(node, (ast.Import, ast.ImportFrom))
        statement = Statement(name, node, _segment(lines, node), _bound_names(node), _used_names(node), is_import)
        module.statements.append(statement)
    return module


def _load_all(backend: str) -> dict[str, Module]:
    """The backend and every module it inlines, recursively, dependencies first."""
    modules: dict[str, Module] = {}

    def visit(name: str) -> None:
        if name in modules:
            return
        module = load(name)
        for dependency, _ in module.inlined.values():
            visit(dependency)
        modules[name] = module

    visit(backend)
    return modules


def reachable(modules: dict[str, Module], backend: str) -> list[Statement]:
    """The statements kept for the backend's vendored file, in module order then source order."""
    if not modules[backend].public:
        raise VendorError(f"{backend} has no __all__: nothing is public")
    kept: set[int] = set()
    queue = [(backend, name) for name in [*modules[backend].public, "__all__"]]

    def resolve(module: str, name: str) -> list[Statement]:
        found = [s for s in modules[module].statements if name in s.binds]
        if found or name not in modules[module].inlined:
            return found
        return resolve(*modules[module].inlined[name])

    changed = True
    while changed:
        while queue:
            for statement in resolve(*queue.pop()):
                if id(statement) not in kept:
                    kept.add(id(statement))
                    queue.extend((statement.module, used) for used in statement.uses)
        changed = False
        for module in modules.values():
            for statement in module.statements:
                if id(statement) in kept:
                    continue
                if statement.binds:  # a definition registered by a kept one's decorator (@f.defjvp)
                    decorators = getattr(statement.node, "decorator_list", [])
                    triggers = {n.id for d in decorators for n in ast.walk(d) if isinstance(n, ast.Name)}
                    hits = [s for u in triggers for s in resolve(module.name, u) if not s.is_import]
                else:  # a statement with effects only (f.defvjp(...), table.update(...))
                    hits = [s for u in statement.uses for s in resolve(module.name, u)]
                if any(id(s) in kept for s in hits):
                    kept.add(id(statement))
                    queue.extend((module.name, used) for used in statement.uses)
                    changed = True
    return [s for m in modules.values() for s in m.statements if id(s) in kept]


def _import_sources(node: ast.stmt) -> dict[str, str]:
    """Each name an import binds -> what it binds it to ('numpy', 'typing.Any', ...)."""
    if isinstance(node, ast.Import):
        return {(a.asname or a.name).split(".")[0]: a.name if a.asname else a.name.split(".")[0] for a in node.names}
    assert isinstance(node, ast.ImportFrom)
    return {a.asname or a.name: f"{'.' * node.level}{node.module}.{a.name}" for a in node.names}


def _check_names(statements: list[Statement]) -> list[Statement]:
    """Imports written once (one binding only names bound the same way already is dropped); every
    other top-level name bound by one module only."""
    owners: dict[str, str] = {}
    result = []
    for statement in statements:
        if statement.is_import:
            bindings = _import_sources(statement.node)
        else:
            bindings = dict.fromkeys(statement.binds, f"a definition of {statement.module}")
        if statement.is_import and all(owners.get(name) == source for name, source in bindings.items()):
            continue
        for name, source in bindings.items():
            if owners.setdefault(name, source) != source:
                raise VendorError(f"top-level name {name!r} bound as {owners[name]} and as {source}")
        result.append(statement)
    return result


def build(backend: str, filename: str) -> str:
    modules = _load_all(backend)
    statements = _check_names(reachable(modules, backend))
    pieces: list[str] = []
    for module in modules.values():
        text = ""
        previous: Statement | None = None
        for statement in (s for s in statements if s.module == module.name):
            if previous is not None:
                blocks = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
                adjacent = statement.node.lineno - len(statement.lines) + 1 == (previous.node.end_lineno or 0) + 1
                if isinstance(statement.node, blocks) or isinstance(previous.node, blocks):
                    text += "\n\n\n"
                else:
                    text += "\n" if adjacent else "\n\n"
            text += "\n".join(statement.lines)
            previous = statement
        if text:
            origin = module.path.relative_to(ROOT)
            pieces.append(f"# {'=' * 94}\n# from {origin}\n# {'=' * 94}\n{text}\n")
    sources = [str(m.path.relative_to(ROOT)) for m in modules.values()]
    main = modules[backend]
    note = (
        f"Single-file copy, generated by tools/vendor.py (``nox -s vendor``) from {', '.join(sources)} of "
        f"the p-RoPE project: the definitions reachable from {', '.join(main.public)}; nothing else. "
        f"Do not edit: regenerate. To vendor it, copy this one file into your code base as {filename} and "
        "import it from there (README.md, 'Vendoring')."
    )
    header = (
        f'"""{(main.docstring or "").strip()}\n\n{textwrap.fill(note, 100, break_on_hyphens=False)}\n"""\n\n'
        "# ruff: noqa\n# mypy: ignore-errors\nfrom __future__ import annotations\n\n"
    )
    return header + "\n\n".join(pieces)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file is stale")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="write the files there instead")
    args = parser.parse_args(argv)
    stale = []
    for filename, backend in BACKENDS.items():
        text = build(backend, filename)
        target = args.out / filename
        if args.check:
            current = target.read_text() if target.exists() else ""
            if current != text:
                stale.append(filename)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        current.splitlines(True), text.splitlines(True), str(target), f"{filename} (fresh)", n=1
                    )
                )
        else:
            target.write_text(text)
            print(f"wrote {target}")
    if stale:
        print(f"stale vendored files: {', '.join(stale)}; run `nox -s vendor`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
