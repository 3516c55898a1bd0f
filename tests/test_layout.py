"""The packages depend one way (README "Layout"; issue #14), and the gateway runs without the
worker's dependencies.

Every import of every module is read from its source (lazy ones inside functions, and those
under TYPE_CHECKING, included) and checked against ALLOWED; the gateway is imported in a
fresh interpreter to see that torch, Triton, PyAV and numpy stay out; and what the gateway's
modules import from outside must come with pyproject's base dependencies, so that
`pip install .` (docker/Dockerfile.gateway) runs it.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "media", "contract", "service", "workers", "cli")
# package -> the packages of ours it may import
ALLOWED = {
    "kernels": set(),
    "media": set(),
    "contract": {"media"},
    "service": {"contract", "media"},
    "workers": {"contract", "media", "kernels"},
    "cli": {"kernels", "media", "contract", "service", "workers"},
}
# the media modules the contract and the gateway may use: no PyAV, no numpy behind them
GATEWAY_MEDIA = {"media", "media.sniff", "media.limits", "media.errors"}
WORKER_ONLY = {"torch", "triton", "av", "numpy"}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    path: str  # its file, relative to the repository
    line: int
    target: str  # the dotted name imported (a module, or a name inside one)
    lazy: bool  # inside a function (imported when called), not at module level

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.importer}) imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_of(path: Path) -> list[Import]:
    name, rel = _module_name(path), str(path.relative_to(ROOT))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend(Import(name, rel, child.lineno, a.name, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolved against this module's package
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                found.extend(
                    Import(name, rel, child.lineno, f"{base}.{a.name}" if base else a.name, lazy)
                    for a in child.names
                )
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=rel), False)
    return found


@functools.cache
def all_imports() -> tuple[Import, ...]:
    files = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert len(files) > 100, "the packages were not found"
    return tuple(i for f in files for i in _imports_of(f))


def _top(name: str) -> str:
    return name.partition(".")[0]


def _ours(target: str) -> str | None:
    """The module of ours an import names (`from contract import jobstore` names a module,
    `from contract.schemas import JobStatus` a name in one); None for anything else."""
    if _top(target) not in PACKAGES:
        return None
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        stem = ROOT.joinpath(*parts[:n])
        if stem.with_suffix(".py").is_file() or (stem / "__init__.py").is_file():
            return ".".join(parts[:n])
    raise AssertionError(f"{target}: no such module of ours")


def test_packages_import_only_the_packages_below_them():
    wrong = []
    for imp in all_imports():
        target = _ours(imp.target)
        if target is None:
            continue
        src, dst = _top(imp.importer), _top(target)
        if dst != src and dst not in ALLOWED[src]:
            may = ", ".join(sorted(ALLOWED[src])) or "nothing of ours"
            wrong.append(f"{imp}: {src}/ may import {may}")
        elif src in ("contract", "service") and dst == "media" and target not in GATEWAY_MEDIA:
            wrong.append(f"{imp}: the gateway's side uses only {sorted(GATEWAY_MEDIA)} (no PyAV)")
        elif src == "cli" and dst in ("workers", "kernels") and not imp.lazy:
            wrong.append(f"{imp}: cli/ imports the worker inside the commands that need it")
    assert not wrong, "imports going the wrong way:\n" + "\n".join(wrong)


def test_the_model_never_imports_the_engine():
    wrong = [
        str(imp)
        for imp in all_imports()
        if imp.importer.startswith("workers.model")
        and (_ours(imp.target) or "").startswith("workers.engine")
    ]
    assert not wrong, "workers/model/ imports workers/engine/:\n" + "\n".join(wrong)


def test_the_gateway_imports_neither_torch_nor_triton_nor_pyav():
    code = (
        "import sys\n"
        "import cli.main, cli.serve, service.main, service.webhooks\n"
        "service.main.create_app().openapi()\n"
        f"loaded = {{m.partition('.')[0] for m in sys.modules}}\n"
        f"print(sorted(loaded & set({sorted(WORKER_ONLY)!r})))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"the gateway loaded {run.stdout.strip()}"


def _with_dependencies(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install here: they and what they require, on this
    platform, without their extras."""
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.requires(name) or []]
    return seen


def _gateway_imports() -> list[Import]:
    """The imports that run in the gateway: all of service/ and contract/, what of ours they
    reach, and cli/'s module-level ones (`omnibatch gateway` and `webhooks` go through it)."""
    by_module: dict[str, list[Import]] = {}
    for imp in all_imports():
        by_module.setdefault(imp.importer, []).append(imp)
    todo = [m for m in by_module if _top(m) in ("service", "contract")]
    todo += [m for m in by_module if _top(m) == "cli"]
    seen, used = set(), []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imp in by_module.get(module, []):
            if _top(module) == "cli" and imp.lazy:
                continue
            used.append(imp)
            if (target := _ours(imp.target)) is not None:
                todo.append(target)
    return used


def test_the_base_dependencies_carry_the_gateway():
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    base = {canonicalize_name(Requirement(r).name) for r in requirements}
    assert not base & WORKER_ONLY, f"base dependencies hold {sorted(base & WORKER_ONLY)}"
    provided = _with_dependencies(requirements)
    dists_of = metadata.packages_distributions()
    wrong = []
    for imp in _gateway_imports():
        top = _top(imp.target)
        if top in sys.stdlib_module_names or top in PACKAGES:
            continue
        dists = {canonicalize_name(d) for d in dists_of.get(top, [])}
        if not dists:
            wrong.append(f"{imp}: no installed distribution provides {top}")
        elif not dists & provided:
            wrong.append(f"{imp}: {top} comes from {sorted(dists)}, not a base dependency")
    assert not wrong, "the gateway needs more than `pip install .`:\n" + "\n".join(wrong)


def test_a_worker_command_in_a_gateway_install_says_what_to_install():
    code = "import sys; sys.modules['torch'] = None; import cli.main; cli.main.main(['run', 'x'])"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "torch is not installed" in run.stderr and "'.[worker]'" in run.stderr
