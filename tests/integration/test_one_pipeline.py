"""One pipeline however it is launched: the profile is part of the definitions, and versioned with them.

- every asset's config defaults are the profile's values, so a launch without run config (the UI's
  Materialize, a backfill, an automation tick, ``dg launch``) runs what ``lmpipe run`` runs;
- an asset's code version includes its config, so Dagster's staleness (the UI's) and ``lmpipe run --stale`` agree
  after a profile edit, a code edit and a corpus edit;
- a downstream asset refuses an upstream artifact built with another config, naming both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._config import process_config

from assets.data.partitions import ALL_PARTITIONS
from assets.io_manager import CONFIG_SHA_KEY
from assets.versions import project_imports
from pipelines.cli import main
from pipelines.definitions import build_definitions
from pipelines.home import PROJECT_ROOT, prepare_home
from pipelines.profile import load_profile
from pipelines.runner import observe_corpus
from tests.integration.conftest import write_profile

DATA = {"base_model", "raw_corpus", "clean_corpus", "splits", "tokenizer", "tokenized", "token_shards"}


def _defaults(defs: dg.Definitions, name: str) -> dict:
    """The config a launch without run config gives asset ``name``: its schema's defaults, resolved."""
    op = defs.resolve_assets_def(name).op
    return process_config(op.config_schema.as_field().config_type, {}).value


def _leaves(values: dict, prefix: tuple = ()) -> list[tuple[tuple, object]]:
    out = []
    for key, value in values.items():
        out += _leaves(value, (*prefix, key)) if isinstance(value, dict) else [((*prefix, key), value)]
    return out


@pytest.mark.parametrize("name", ["demo", "book", "seeds", "finetune_gpt2"])
def test_every_asset_defaults_to_its_profile_values_at_any_depth(name):
    profile = load_profile(name)
    defs = build_definitions(profile)
    checked = 0
    for asset, values in profile.assets.items():
        resolved = _defaults(defs, asset)
        for path, value in _leaves(values):
            got = resolved
            for part in path:
                got = got[part]
            assert got == value, f"{asset}.{'.'.join(path)}: default {got!r}, profile {value!r}"
            checked += 1
    assert checked >= 20


def test_a_profile_edit_changes_the_code_version_of_that_asset_only(tmp_path, corpus_dir):
    path = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    before = build_definitions(load_profile(config_file=path)).resolve_asset_graph()
    path = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], tokenizer={"vocab_size": 320})
    after = build_definitions(load_profile(config_file=path)).resolve_asset_graph()
    changed = {
        k.to_user_string()
        for k in after.materializable_asset_keys
        if after.get(k).code_version != before.get(k).code_version
    }
    assert changed == {"tokenizer"}
    assert (
        after.get(dg.AssetKey("tokenizer")).metadata[CONFIG_SHA_KEY]
        != before.get(dg.AssetKey("tokenizer")).metadata[CONFIG_SHA_KEY]
    )


def test_values_dagster_would_reject_are_caught_before_anything_runs(home, tmp_path, corpus_dir, capsys):
    path = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    for bad in (
        "tokenizer.vocab_size=280.0",
        "tokenizer.vocab_size='\"512\"'",
        "pretrained_model.train.batch_size=true",
    ):
        assert main(["run", "--config", str(path), "--set", bad]) == 2
        err = capsys.readouterr().out
        assert f"assets.{bad.split('=')[0]}" in err, err
    assert not (home / "logs").exists()  # nothing ran


def test_a_launch_without_run_config_builds_what_lmpipe_run_builds(home, tmp_path, corpus_dir):
    """The UI's Materialize (the implicit asset job, no run config) and ``lmpipe run`` give the same data version."""
    path = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], tokenizer={"vocab_size": 320})
    assert main(["run", "--config", str(path), "--select", "raw_corpus"]) == 0
    prepare_home()
    instance = dg.DagsterInstance.get()
    by_cli = instance.get_latest_materialization_event(dg.AssetKey("raw_corpus"))
    defs = build_definitions(load_profile(config_file=path))
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("raw_corpus")], tags=ALL_PARTITIONS)
    assert result.success
    by_ui = instance.get_latest_materialization_event(dg.AssetKey("raw_corpus"))
    assert by_ui.run_id != by_cli.run_id
    for meta in ("config_sha256", "corpus_version"):
        assert by_ui.asset_materialization.metadata[meta] == by_cli.asset_materialization.metadata[meta]
    assert _defaults(defs, "tokenizer")["vocab_size"] == 320


def test_a_downstream_asset_refuses_an_upstream_built_with_another_config(home, tmp_path, corpus_dir, capsys):
    path = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(path), "--select", "group:data"]) == 0
    # raw_corpus again, from the Launchpad with an edited config (the code location's defaults are the profile's)
    defs = build_definitions(load_profile(config_file=path))
    prepare_home()
    edited = {"ops": {"raw_corpus": {"config": {"invalid_utf8": "replace"}}}}
    job = defs.resolve_implicit_global_asset_job_def()
    other = job.execute_in_process(
        run_config=edited,
        instance=dg.DagsterInstance.get(),
        asset_selection=[dg.AssetKey("raw_corpus")],
        tags=ALL_PARTITIONS,
    )
    assert other.success
    capsys.readouterr()

    assert main(["run", "--config", str(path), "--select", "token_shards"]) == 0  # its inputs are the profile's
    assert main(["run", "--config", str(path), "--select", "clean_corpus+"]) == 1
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    expected = defs.resolve_asset_graph().get(dg.AssetKey("raw_corpus")).metadata[CONFIG_SHA_KEY]
    assert f"run {other.run_id}" in out and f"config sha256 {expected[:12]}" in out, out
    assert "mix two configs' artifacts" in out and "own LMPIPE_HOME" in out
    assert main(["run", "--config", str(path), "--select", "raw_corpus+"]) == 0  # rebuilt with the profile: fine


# --- Dagster's staleness (what the UI shows) against lmpipe run --stale, on a copy of the code -----------------

_STALE = """{ assetNodes { assetKey { path } isPartitioned isMaterializable staleStatus } }"""
_BY_PARTITION = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  staleStatusByPartition } } }"""
_LOCATION = """import os
from pipelines.definitions import build_definitions
from pipelines.profile import load_profile
defs = build_definitions(load_profile(config_file=os.environ["STALE_TEST_PROFILE"]))
"""


def _ui_stale(tree: Path, instance: dg.DagsterInstance) -> set[str]:
    """The data assets the UI shows stale or missing (any partition), through its GraphQL API on a code server."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    stale = set()
    with define_out_of_process_context(str(tree / "location.py"), "defs", instance) as context:
        for node in execute_dagster_graphql(context, _STALE).data["assetNodes"]:
            name, status = node["assetKey"]["path"][0], node["staleStatus"]
            if node["isPartitioned"]:
                data = execute_dagster_graphql(context, _BY_PARTITION, {"key": {"path": [name]}}).data
                status = (
                    "STALE" if {"STALE", "MISSING"} & set(data["assetNodeOrError"]["staleStatusByPartition"]) else ""
                )
            if name in DATA and status in ("STALE", "MISSING"):
                stale.add(name)
    return stale


def _cli_stale(tree: Path, profile: Path) -> dict[str, str]:
    """``lmpipe run --select group:data --stale`` from the copy: what it lists as needing a run, with why (then it
    runs them)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--config", str(profile), "--select", "group:data", "--stale"]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    listed = dict(re.findall(r"^  (\w+)\s+(.+?)\s*$", proc.stdout, re.M))
    assert set(listed) == DATA, proc.stdout
    return {name: why for name, why in listed.items() if why != "up to date"}


def test_the_uis_staleness_and_lmpipe_run_stale_agree(home, tmp_path, corpus_dir, monkeypatch):
    """Dagster marks stale what changed itself (its code version: code or profile config) or whose inputs have new
    data (a new corpus version); ``--stale`` runs exactly those, plus what is downstream of them, which is about to
    get new inputs (Dagster marks it stale one hop at a time, after each upstream run)."""
    tree = tmp_path / "tree"
    for package in ("lmcore", "assets", "pipelines"):
        shutil.copytree(PROJECT_ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "location.py").write_text(_LOCATION)
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    monkeypatch.setenv("STALE_TEST_PROFILE", str(profile))
    monkeypatch.setenv("PYTHONPATH", str(tree))  # the code server imports the copy
    monkeypatch.chdir(tree)  # (its working directory comes first on its sys.path)
    assert set(_cli_stale(tree, profile)) == DATA  # an empty home: everything is missing, and is built
    prepare_home()
    instance = dg.DagsterInstance.get()
    assert _ui_stale(tree, instance) == set()
    graph = build_definitions(load_profile(config_file=profile)).resolve_asset_graph()

    formats = tree / "lmcore/data/sources/formats.py"  # reached by raw_corpus and splits only
    edits = {
        "profile": lambda: write_profile(profile, [str(corpus_dir)], tokenizer={"vocab_size": 320}),
        "code": lambda: formats.write_text(formats.read_text() + "\n# edited\n"),
        "corpus": lambda: (corpus_dir / "new_book.txt").write_text("A new chapter with fresh words and gulls. " * 20),
    }
    modules = {name: graph.get(dg.AssetKey(name)).assets_def.op.compute_fn.decorated_fn.__module__ for name in DATA}
    reach = {name for name, module in modules.items() if "lmcore.data.sources.formats" in project_imports(module, tree)}
    assert "raw_corpus" in reach and "tokenizer" not in reach
    changed = {"profile": {"tokenizer"}, "code": reach, "corpus": {"raw_corpus"}}
    for what, edit in edits.items():
        edit()
        if what == "corpus":  # the UI sees a corpus change once the source is observed (its button, automation)
            observe_corpus(instance, build_definitions(load_profile(config_file=profile)))
        ui = _ui_stale(tree, instance)
        assert ui == changed[what], (what, ui)
        cli = _cli_stale(tree, profile)  # lists, then runs
        assert {name for name, why in cli.items() if not why.startswith("upstream ")} == ui, (what, cli)
        assert set(cli) == ui | (DATA & _descendants(graph, ui)), (what, cli)
        assert _ui_stale(tree, instance) == set(), what


def _descendants(graph, names: set[str]) -> set[str]:
    out, todo = set(), [dg.AssetKey(n) for n in names]
    while todo:
        for child in graph.get(todo.pop()).child_keys:
            if child.to_user_string() not in out:
                out.add(child.to_user_string())
                todo.append(child)
    return out


def test_a_dg_project_whose_launch_runs_the_profile(home, tmp_path, corpus_dir):
    """``dg check defs`` loads the code location; ``dg launch`` (no run config) builds raw_corpus with the profile's
    config, the one the definitions carry."""
    dg_cli = Path(sys.executable).parent / "dg"
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    prepare_home()  # the instance dg launch runs against: $LMPIPE_HOME/dagster
    # ATEN_CPU_CAPABILITY: the code location pins torch's kernels whatever the shell forced
    env = {
        **os.environ,
        "LMPIPE_PROFILE": str(profile),
        "VIRTUAL_ENV": sys.prefix,
        "OMP_NUM_THREADS": "1",
        "ATEN_CPU_CAPABILITY": "default",
    }
    checked = subprocess.run(
        [str(dg_cli), "check", "defs"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 0 and "All definitions loaded successfully" in checked.stdout, checked.stderr
    launch = [str(dg_cli), "launch", "--assets", "raw_corpus", "--partition-range", "00...15"]
    launched = subprocess.run(launch, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-2000:]
    mat = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("raw_corpus")).asset_materialization
    graph = build_definitions(load_profile(config_file=profile)).resolve_asset_graph()
    assert mat.metadata["config_sha256"].value == graph.get(dg.AssetKey("raw_corpus")).metadata[CONFIG_SHA_KEY]
    assert mat.tags["dagster/code_version"] == graph.get(dg.AssetKey("raw_corpus")).code_version
    assert mat.metadata["reproducibility"].value["cpu_dispatch"] == "AVX2", "the run's processes pinned the kernels"
