"""Derived code versions: an asset module's version changes exactly when a project module it reaches changes.

The oracle for "reaches" is Python itself: a subprocess imports each asset module with the project modules evicted
from ``sys.modules`` and reports what got loaded. That misses imports that run only when a function is called, so
those are listed in ``LAZY_EDGES``, each with its reason; any other difference between the static closure and the
runtime one fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assets.versions import PROJECT_ROOT, code_version_of, project_imports

PACKAGES = ("lmcore", "assets")

# (importer, imported): imports inside a function, so importing the asset modules does not run them; the static
# closure includes them, as calling the function runs that code. Keep each one necessary: an edge that the runtime
# closure already covers, or that the importer no longer names, fails the test.
LAZY_EDGES: dict[tuple[str, str], str] = {
    ("lmcore.model.checkpoint", "lmcore.model.gpt"): (
        "load_trained_model builds a GPT from the config saved in a checkpoint; the rest of the module saves and "
        "loads any nn.Module, so it imports the model only in the one function that constructs one"
    ),
}

# Evict every project module (pipelines too, which must not be imported by assets), import one module, and report
# what of lmcore/assets got loaded and from where. Third-party modules stay cached, so each import is cheap.
_ORACLE = r"""
import importlib, json, sys
loaded = {}
for name in json.loads(sys.argv[1]):
    for cached in [n for n in sys.modules if n.split(".")[0] in ("lmcore", "assets", "pipelines")]:
        del sys.modules[cached]
    importlib.import_module(name)
    project = [n for n in sys.modules if n.split(".")[0] in ("lmcore", "assets")]
    loaded[name] = {n: getattr(sys.modules[n], "__file__", None) for n in project}
print(json.dumps(loaded))
"""


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path, package: str) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted((root / package).rglob("*.py")) if "__pycache__" not in p.parts}


def _runtime_closures(root: Path, modules: list[str]) -> dict[str, set[str]]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _ORACLE, json.dumps(modules)], cwd=root, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, f"importing the asset modules failed:\n{out.stderr[-4000:]}"
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    for name, files in loaded.items():
        outside = {n: f for n, f in files.items() if f is None or not Path(f).resolve().is_relative_to(root)}
        assert not outside, f"importing {name} loaded project modules from outside the copy: {outside}"
    return {name: set(files) for name, files in loaded.items()}


def _with_lazy_edges(module: str, runtime: dict[str, set[str]]) -> set[str]:
    """The runtime closure of ``module`` plus what the listed lazy imports load, transitively."""
    reach = set(runtime[module])
    grew = True
    while grew:
        grew = False
        for importer, imported in LAZY_EDGES:
            if importer in reach and not runtime[imported] <= reach:
                reach |= runtime[imported]
                grew = True
    return reach


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree").resolve()
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def expected(tree) -> dict[str, set[str]]:
    """For each asset module, the project modules it reaches, by the runtime oracle and LAZY_EDGES."""
    asset_modules = sorted(_modules(tree, "assets"))
    lazy = sorted({m for edge in LAZY_EDGES for m in edge})
    runtime = _runtime_closures(tree, asset_modules + lazy)
    project = {**_modules(tree, "lmcore"), **_modules(tree, "assets")}
    for (importer, imported), why in LAZY_EDGES.items():
        assert imported not in runtime[importer], f"{importer} imports {imported} at import time: drop the entry"
        source = project[importer].read_text()
        assert re.search(rf"^\s+(from {re.escape(imported)} import|import {re.escape(imported)}\b)", source, re.M), (
            f"{importer} no longer imports {imported} inside a function ({why}): drop the entry"
        )
    return {m: _with_lazy_edges(m, runtime) for m in asset_modules}


def test_static_closure_of_each_asset_module_is_what_python_loads_plus_listed_lazy_imports(tree, expected):
    problems = []
    for module, reach in expected.items():
        static = project_imports(module, root=tree)
        if extra := sorted(static - reach):
            problems.append(f"{module}: static closure has {extra}, which neither runs on import nor is in LAZY_EDGES")
        if missing := sorted(reach - static):
            problems.append(f"{module}: static closure misses {missing}, which Python loads")
    assert not problems, "\n".join(problems)


def test_editing_a_module_changes_exactly_the_versions_of_the_asset_modules_that_reach_it(tree, expected):
    def versions() -> dict[str, str]:
        code_version_of.cache_clear()  # cached per (module, root) for a process's life; the tree changes here
        return {m: code_version_of(m, root=tree) for m in expected}

    baseline = versions()
    edited_files = {**_modules(tree, "lmcore"), **_modules(tree, "assets")}
    assert {"lmcore", "lmcore.data.sources", "lmcore.data.sources.fetch"} <= set(edited_files)
    problems = []
    for name, path in edited_files.items():
        original = path.read_bytes()
        path.write_bytes(original + b"\nX_EDITED = 1\n")
        try:
            changed = {m for m, v in versions().items() if v != baseline[m]}
        finally:
            path.write_bytes(original)
        should = {m for m, reach in expected.items() if name in reach}
        if changed != should:
            problems.append(
                f"editing {name}: changed {sorted(changed - should)} that do not reach it, "
                f"left {sorted(should - changed)} that do"
            )
    assert not problems, "\n".join(problems)
    assert versions() == baseline, "reverting every edit must restore every version"


# Each way an import can be written, with what it must reach; the files that use ``TYPE_CHECKING`` or an import after
# ``:`` are parsed whole, the others by their import lines alone, so both paths are covered.
SYNTHETIC = {
    "lmcore/__init__.py": "",
    "lmcore/a.py": (
        "from typing import TYPE_CHECKING\n\nfrom . import b\n\nif TYPE_CHECKING:\n    from lmcore import typing_only\n"
    ),
    "lmcore/b.py": (
        '"""Docstring."""\n\nfrom .sub import leaf  # a submodule, not a name\n\n\n'
        "def g():\n    from lmcore import nested\n"
    ),
    "lmcore/nested.py": "",
    "lmcore/sub/__init__.py": "",
    "lmcore/sub/leaf.py": "def h():\n    try: import lmcore.lazy\n    except ImportError: pass\n",
    "lmcore/sub/other.py": "",
    "lmcore/typing_only.py": "",
    "lmcore/lazy.py": "",
    "lmcore/unrelated.py": "",
    "assets/__init__.py": "",
    "assets/x.py": "import dagster as dg\n\nimport lmcore.a\n",
}
REACHED = {
    "assets",
    "assets.x",
    "lmcore",
    "lmcore.a",
    "lmcore.b",
    "lmcore.nested",
    "lmcore.sub",
    "lmcore.sub.leaf",
    "lmcore.lazy",
}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_code_version_is_stable_and_changes_with_what_the_module_reaches(tmp_path):
    one, two = _write(tmp_path / "one", SYNTHETIC), _write(tmp_path / "two", SYNTHETIC)
    static = project_imports("assets.x", root=one)
    assert static == REACHED, f"extra {sorted(static - REACHED)}, missing {sorted(REACHED - static)}"
    first = code_version_of("assets.x", root=one)
    code_version_of.cache_clear()
    assert code_version_of("assets.x", root=one) == first == code_version_of("assets.x", root=two)  # any path
    assert re.fullmatch(r"[0-9a-f]{12}", first)

    for rel in SYNTHETIC:
        path = one / rel
        path.write_text(SYNTHETIC[rel] + "X_EDITED = 1\n")
        code_version_of.cache_clear()
        changed = code_version_of("assets.x", root=one) != first
        path.write_text(SYNTHETIC[rel])
        assert changed == (_module_name(path, one) in REACHED), f"editing {rel}"
    code_version_of.cache_clear()
    assert code_version_of("assets.x", root=one) == first


def test_a_module_outside_the_project_packages_is_refused(tmp_path):
    _write(tmp_path, SYNTHETIC)
    for module in ("assets.missing", "pipelines.definitions", "dagster"):
        with pytest.raises(FileNotFoundError, match=re.escape(repr(module))):
            project_imports(module, root=tmp_path)
