"""lmcore must never import dagster, assets or pipelines (the one dependency rule)."""

import ast
from pathlib import Path

LMCORE = Path(__file__).resolve().parents[2] / "lmcore"
FORBIDDEN = {"dagster", "dagster_pipes", "assets", "pipelines"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_lmcore_imports_no_orchestration():
    offenders = {str(p.relative_to(LMCORE)): sorted(_imports(p) & FORBIDDEN) for p in LMCORE.rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"lmcore must not import {FORBIDDEN}: {offenders}"


def test_rule_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom dagster import asset\n")
    assert _imports(bad) & FORBIDDEN == {"dagster"}


LAYERS = {"io": 0, "workers": 0, "cpu": 0, "publish": 1, "data": 1, "model": 2, "train": 3, "eval": 3, "finetune": 4}
"""Inside lmcore a package imports only from lower layers (io, workers and cpu at the bottom, finetune at the top); two
packages of one layer never import each other."""


def _package(path: Path) -> str:
    rel = path.relative_to(LMCORE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _lmcore_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        names.update(m.split(".")[1] for m in modules if m.startswith("lmcore.") and m.split(".")[1] in LAYERS)
    return names


def test_lmcore_packages_import_downwards_only():
    packages = {_package(p) for p in LMCORE.rglob("*.py")} - {"__init__"}
    assert packages == set(LAYERS), f"give every lmcore package a layer: {sorted(packages ^ set(LAYERS))}"
    upward = {
        str(p.relative_to(LMCORE)): sorted(q for q in _lmcore_imports(p) if LAYERS[q] > LAYERS[_package(p)])
        for p in LMCORE.rglob("*.py")
        if _package(p) in LAYERS
    }
    sideways = {
        str(p.relative_to(LMCORE)): sorted(
            q for q in _lmcore_imports(p) if LAYERS[q] == LAYERS[_package(p)] and q != _package(p)
        )
        for p in LMCORE.rglob("*.py")
        if _package(p) in LAYERS
    }
    assert not {k: v for k, v in upward.items() if v}, f"imports against the layering: {upward}"
    assert not {k: v for k, v in sideways.items() if v}, f"packages of one layer must not import each other: {sideways}"


def test_layering_rule_detects_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from lmcore.finetune.chat import render_chatml\nimport lmcore.io\nfrom lmcore.workers import run_parallel\n"
    )
    assert _lmcore_imports(bad) == {"finetune", "io", "workers"}
