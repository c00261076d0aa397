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
