"""Artifacts on object storage through fsspec: a file:// bucket stands in for s3:// or gs://."""

from __future__ import annotations

import shutil

import dagster as dg

from assets.resources import FsspecArtifactStore
from lmcore.data.shards import verify_shards
from pipelines.cli import main
from tests.integration.conftest import write_profile


def test_data_group_publishes_to_the_bucket_and_reads_back_from_it(home, tmp_path, corpus_dir, monkeypatch):
    bucket = tmp_path / "bucket"
    monkeypatch.setenv("LMPIPE_ARTIFACTS_URL", f"file://{bucket}")
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    location = (
        instance.get_latest_materialization_event(dg.AssetKey("token_shards"))
        .asset_materialization.metadata["artifact_path"]
        .value
    )
    assert location.startswith("file://") and (bucket / "token_shards").is_dir()

    # A fresh machine: no local copies. Downstream stages fetch and verify from the bucket.
    shutil.rmtree(home / "artifacts")
    assert main(["run", "--config", str(profile), "--select", "token_shards"]) == 0
    store = FsspecArtifactStore(url=f"file://{bucket}", home=str(home))
    assert verify_shards(store.local_path(location)) == []


def test_incomplete_upload_is_reported(home, tmp_path):
    store = FsspecArtifactStore(url=f"file://{tmp_path / 'bucket'}", home=str(home))
    (tmp_path / "bucket" / "splits" / "0123456789abcdef").mkdir(parents=True)
    try:
        store.local_path(f"file://{tmp_path / 'bucket'}/splits/0123456789abcdef")
    except FileNotFoundError as exc:
        assert "incomplete" in str(exc)
    else:
        raise AssertionError("expected FileNotFoundError")


def test_a_missing_or_corrupt_reference_names_the_asset_and_the_fix(home, tmp_path, corpus_dir, capsys, monkeypatch):
    bucket = tmp_path / "bucket"
    monkeypatch.setenv("LMPIPE_ARTIFACTS_URL", f"file://{bucket}")
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "token_shards"]) == 1, "upstream never materialized"
    out = capsys.readouterr().out
    assert "splits was never materialized in this store" in out or "tokenizer was never materialized" in out
    assert main(["run", "--config", str(profile), "--select", "raw_corpus"]) == 0
    ref = bucket / "raw_corpus" / "partitions" / "00" / "latest.json"  # one partition's reference
    good = ref.read_text()
    ref.write_text('{"kind": "Documents"')  # torn
    assert main(["run", "--config", str(profile), "--select", "clean_corpus"]) == 1
    assert f"{ref}: not an artifact reference" in capsys.readouterr().out.replace("file://", "")
    ref.write_text(good.replace("Documents", "Nonsense"))
    assert main(["run", "--config", str(profile), "--select", "clean_corpus"]) == 1
    assert "unknown kind; re-materialize that asset" in capsys.readouterr().out
    ref.write_text(good)
    assert main(["run", "--config", str(profile), "--select", "clean_corpus"]) == 0, "fixed: runs again"
