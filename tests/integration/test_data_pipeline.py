"""The data group through the real CLI into a real Dagster instance."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from lmcore.io import read_json
from pipelines.cli import main
from tests.integration.conftest import write_profile


def _artifact(home, asset):
    """The published versions of ``asset`` (``partitions/`` holds a partitioned asset's references)."""
    root = home / "artifacts" / asset
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "partitions"]


def _partition_versions(home, asset):
    """The published version each partition's reference names."""
    refs = sorted((home / "artifacts" / asset / "partitions").glob("*/latest.json"))
    return {ref.parent.name: read_json(ref)["location"] for ref in refs}


def _latest_ref(home, asset):
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    mat = event.asset_materialization
    return mat.metadata["artifact_path"].value, mat.tags.get("dagster/data_version")


def test_data_group_runs_and_is_recorded_in_the_instance(home, tmp_path, corpus_dir, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
    out = capsys.readouterr().out
    assert "succeeded" in out and "token_shards" in out
    path, version = _latest_ref(home, "token_shards")
    manifest = read_json(f"{path}/manifest.json")
    assert version and manifest["dtype"] == "uint16" and manifest["vocab_size"] == 300
    assert all(manifest["splits"][s]["tokens"] > 0 for s in ("train", "val", "test"))
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].tags["lmpipe/profile"] == "p"
    assert (home / "dagster" / "dagster.yaml").read_text().count("enabled: false") == 2
    assert "default_limit: 1" in (home / "dagster" / "dagster.yaml").read_text()


def test_two_homes_give_identical_tokenizer_and_shards(tmp_path, corpus_dir, monkeypatch):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    digests = []
    for name in ("a", "b"):
        home = tmp_path / name
        monkeypatch.setenv("LMPIPE_HOME", str(home))
        assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
        tok_path, _ = _latest_ref(home, "tokenizer")
        shard_path, shard_version = _latest_ref(home, "token_shards")
        shards = read_json(f"{shard_path}/manifest.json")["splits"]
        digests.append(
            (read_json(f"{tok_path}/manifest.json")["sha256"], shard_version, json.dumps(shards, sort_keys=True))
        )
    assert digests[0] == digests[1]


def test_select_runs_only_the_selection_and_reuses_upstream(home, tmp_path, corpus_dir):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "raw_corpus+"]) == 0  # raw_corpus and clean_corpus
    assert _artifact(home, "clean_corpus") and not (home / "artifacts" / "splits").exists()
    assert main(["run", "--config", str(profile), "--select", "splits"]) == 0  # reads clean_corpus from storage
    assert _artifact(home, "splits")


def test_missing_source_fails_clearly_keeps_old_artifacts_and_recovers(home, tmp_path, corpus_dir, capsys):
    good = write_profile(tmp_path / "good.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(good), "--select", "group:data"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in _artifact(home, "raw_corpus")}
    missing = tmp_path / "nowhere" / "books"
    bad = write_profile(tmp_path / "bad.yaml", [str(missing)])
    assert main(["run", "--config", str(bad), "--select", "group:data"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "nowhere" in out
    assert {p.name: p.stat().st_mtime_ns for p in _artifact(home, "raw_corpus")} == before
    assert not list((home / "artifacts" / "raw_corpus").glob(".staging-*"))
    assert main(["run", "--config", str(good), "--select", "group:data"]) == 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"tokenizer": {"vocab_size": 10}}, "vocab_size"),
        ({"splits": {"val_fraction": "lots"}}, "assets.splits.val_fraction"),
        ({"token_shard": {"shard_tokens": 1}}, "assets.token_shard: no such configurable asset"),
        ({"clean_corpus": {"colour": "red"}}, "assets.clean_corpus.colour"),
    ],
)
def test_invalid_profile_is_rejected_before_any_run_with_the_field_named(
    home, tmp_path, corpus_dir, capsys, overrides, message
):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], **overrides)
    assert main(["run", "--config", str(profile)]) == 2
    assert message in capsys.readouterr().out
    assert not (home / "artifacts").exists()


def test_unknown_profile_and_empty_selection(home, capsys):
    assert main(["run", "--profile", "nope"]) == 2
    assert "available: book, demo, finetune_gpt2, gpt2_124m" in capsys.readouterr().out
    assert main(["run", "--select", "tag:none=none"]) == 2


def test_definitions_load_and_group_the_data_assets():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    data = {k.to_user_string() for k in dg.AssetSelection.groups("data").resolve(graph)}
    assert data >= {"raw_corpus", "clean_corpus", "splits", "tokenizer", "token_shards"}
    assert graph.get(dg.AssetKey("corpus_source")).is_observable
    for job in ("full_pipeline", "data_prep", "pretrain", "finetune_and_evaluate", "retrain"):
        assert defs.resolve_job_def(job)


def test_two_concurrent_runs_of_the_same_assets_do_not_corrupt_them(home, tmp_path, corpus_dir):
    import os
    import subprocess
    import sys

    from lmcore.data.shards import verify_shards

    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--config", str(profile), "--select", "group:data"]
    env = {**os.environ, "LMPIPE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for asset in ("splits", "tokenizer", "token_shards"):
        assert len(_artifact(home, asset)) == 1  # same content, one published version
        assert not list((home / "artifacts" / asset).glob(".staging-*"))
    for asset in ("raw_corpus", "clean_corpus", "tokenized"):  # one version per distinct partition content
        versions = _partition_versions(home, asset)
        assert len(versions) == 16 and set(map(Path, versions.values())) == set(_artifact(home, asset))
        assert not list((home / "artifacts" / asset).glob(".staging-*"))
    (shards,) = _artifact(home, "token_shards")
    assert verify_shards(shards) == []


def test_processes_starting_on_a_new_home_at_once_all_get_the_instance(tmp_path):
    """Without the init lock, 17 of 30 such processes died on the SQLite schema stamp (UNIQUE alembic_version)."""
    import os
    import subprocess
    import sys

    code = "from pipelines.home import prepare_home; import dagster as dg; prepare_home(); dg.DagsterInstance.get()"
    env = {**os.environ, "LMPIPE_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE) for _ in range(6)]
    errors = [p.communicate(timeout=120)[1].decode()[-500:] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
