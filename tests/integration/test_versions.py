"""Versions: stale-only re-runs, the reproducibility manifest, and `lmpipe reproduce`."""

from __future__ import annotations

import dagster as dg

from pipelines.cli import main
from tests.integration.conftest import write_profile


def _count(home, asset):
    """Runs that materialized ``asset`` (a partitioned asset: all its partitions in each)."""
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    return len({r.run_id for r in instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records})


DATA = ("raw_corpus", "clean_corpus", "splits", "tokenizer", "token_shards")


def test_changing_the_cleaning_config_reruns_only_cleaning_and_downstream(home, tmp_path, corpus_dir, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
    assert main(["run", "--config", str(profile), "--select", "group:data", "--stale"]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert [_count(home, a) for a in DATA] == [1, 1, 1, 1, 1]

    changed = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], clean_corpus={"max_doc_chars": 1500})
    assert main(["run", "--config", str(changed), "--select", "group:data", "--stale"]) == 0
    out = capsys.readouterr().out
    assert "config changed" in out and "upstream clean_corpus will re-run" in out
    assert [_count(home, a) for a in DATA] == [1, 2, 2, 2, 2]

    (corpus_dir / "extra.txt").write_text("A document added to the corpus after the first run. " * 10)
    assert main(["run", "--config", str(changed), "--select", "group:data", "--stale"]) == 0
    assert "corpus source changed" in capsys.readouterr().out
    assert [_count(home, a) for a in DATA] == [2, 3, 3, 3, 3]


def test_every_materialization_carries_a_reproducibility_manifest(home, tmp_path, corpus_dir):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    mat = instance.get_latest_materialization_event(dg.AssetKey("tokenized")).asset_materialization
    manifest = mat.metadata["reproducibility"].value  # a partitioned stage's: the same on every partition
    assert manifest["config"]["shard_tokens"] == 4096 and len(manifest["config_sha256"]) == 64
    mat = instance.get_latest_materialization_event(dg.AssetKey("token_shards")).asset_materialization
    manifest = mat.metadata["reproducibility"].value
    assert set(manifest["inputs"]) == {"splits", "tokenizer"} | {f"tokenized[{i:02d}]" for i in range(16)}
    assert {"python", "torch", "tokenizers", "pyarrow", "polars", "dagster"} <= set(manifest["versions"])
    assert "git_commit" in manifest


def test_reproduce_reruns_a_past_run_and_gets_identical_data_versions(home, tmp_path, corpus_dir, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    run_id = instance.get_runs(limit=1)[0].run_id
    capsys.readouterr()
    assert main(["reproduce", run_id[:8]]) == 0
    out = capsys.readouterr().out
    same = "base_model, clean_corpus, raw_corpus, splits, token_shards, tokenized, tokenizer"
    assert f"identical data versions: {same}" in out
    newest = instance.get_runs(limit=1)[0]
    assert newest.tags["lmpipe/reproduces"] == run_id
    assert main(["reproduce", "no-such-run"]) == 2
