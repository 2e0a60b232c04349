"""The layering rule (docs/architecture.md): each layer imports only the ones below it.

The runtime's layers are import-linter contracts in pyproject.toml; here we check that
they hold, that an upward import breaks them (on a copy of the package with one bad
import added), and, by reading the sources, the rules import-linter cannot see because
``cvahash.export`` lives in another folder (export/).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(),
                                reason="import-linter is not installed (the [dev] extra)")


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_runtime_keeps_its_layers():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" in out.stdout and "0 broken" in out.stdout


def _copy_runtime(tmp_path: Path) -> Path:
    """The runtime's sources as a package ``cvahash`` under tmp_path, with the config."""
    shutil.copytree(REPO / "runtime", tmp_path / "cvahash",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "cvahash"


@pytest.mark.parametrize("module, bad_import", [
    ("store/records.py", "from ..query import search"),        # store -> query: upward
    ("kernel/hamming.py", "from ..model import bundle"),       # kernel -> model: upward
    ("station/watchlist.py", "from ..update import apply"),    # siblings stay apart
    ("model/bundle.py", "import torch"),                       # torch on the station
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, bad_import):
    package = _copy_runtime(tmp_path)
    assert _lint(tmp_path, tmp_path).returncode == 0  # the copy itself is fine
    path = package / module
    path.write_text(path.read_text() + f"\n{bad_import}  # injected by the test\n")
    out = _lint(tmp_path, tmp_path)
    assert out.returncode != 0, out.stdout
    assert "BROKEN" in out.stdout


def test_a_module_outside_every_layer_breaks_the_contract(tmp_path):
    package = _copy_runtime(tmp_path)
    (package / "helpers.py").write_text('"""A module in no layer."""\n')
    out = _lint(tmp_path, tmp_path)
    assert out.returncode != 0 and "helpers" in out.stdout


# --- what import-linter cannot see: export/ is cvahash.export from another folder ----


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    top = {"runtime": ["cvahash"], "export": ["cvahash", "export"]}[parts[0]]
    names = top + parts[1:]
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module imported, whether at module level) for every import in path."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []

    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[:len(package) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                found.append((mod, top))
                found.extend((f"{mod}.{a.name}", top) for a in child.names)
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


def _sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_the_runtime_imports_the_toolchain_only_inside_a_command():
    for path in _sources("runtime"):
        for mod, top in _imports(path):
            if mod == "cvahash.export" or mod.startswith("cvahash.export."):
                assert path.parent.name == "commands" and not top, (
                    f"{path.relative_to(REPO)} imports {mod}: only a command may, inside "
                    "its run function (the station never loads torch)")


def test_every_export_module_sits_in_a_layer():
    for path in _sources("export"):
        parts = _module_name(path).split(".")
        assert len(parts) == 2 or parts[2] in ("demo", "onnx", "train", "synth"), (
            f"{path.relative_to(REPO)} is in no layer of export/ (demo, onnx, train, synth)")


def test_export_layers():
    """demo over onnx over train; synth beside them; evaluation without the trainer."""
    order = {"demo": 3, "onnx": 2, "train": 1}
    for path in _sources("export"):
        here = _module_name(path).split(".")
        mine = order.get(here[2]) if len(here) > 2 else None
        for mod, _ in _imports(path):
            parts = mod.split(".")
            if parts[:2] != ["cvahash", "export"] or len(parts) < 3:
                continue
            theirs = order.get(parts[2])
            if mine is not None and theirs is not None:
                assert theirs <= mine, f"{path.relative_to(REPO)} imports {mod} (upward)"
            if here[2] == "synth":
                assert parts[2] == "synth", f"{path.relative_to(REPO)} imports {mod}"
    evaluate = [m for m, _ in _imports(REPO / "export" / "train" / "evaluate.py")]
    assert not any(m.startswith("cvahash.export.train.loop") for m in evaluate)
