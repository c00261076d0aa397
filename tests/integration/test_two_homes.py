"""A second machine: an empty local home, the same artifact store and the same Postgres instance.

What Dagster hands from one asset to the next is a reference stored in the artifact store
(``assets.io_manager``), not a pickle under the local ``DAGSTER_HOME``, so a downstream
asset runs on a machine that never ran its upstream assets.
"""

from __future__ import annotations

import json

import dagster as dg

from pipelines.cli import main
from tests.integration.conftest import use_postgres, write_profile


def _latest(home, asset: str) -> dg.AssetMaterialization:
    event = dg.DagsterInstance.from_config(str(home / "dagster")).get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None and event.asset_materialization is not None, asset
    return event.asset_materialization


def test_a_downstream_asset_runs_on_a_second_home(tmp_path, corpus_dir, postgres, monkeypatch):
    bucket = tmp_path / "bucket"
    monkeypatch.setenv("LMPIPE_ARTIFACTS_URL", f"file://{bucket}")
    first, second = tmp_path / "machine-a", tmp_path / "machine-b"
    for home in (first, second):
        use_postgres(home, postgres)
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])

    monkeypatch.setenv("LMPIPE_HOME", str(first))
    assert main(["run", "--config", str(profile), "--select", "*tokenizer"]) == 0
    assert json.loads((bucket / "tokenizer" / "latest.json").read_text())["kind"] == "TokenizerFile"

    monkeypatch.setenv("LMPIPE_HOME", str(second))
    assert not (second / "artifacts").exists(), "machine B starts with nothing local"
    assert main(["run", "--config", str(profile), "--select", "key:tokenized or key:token_shards"]) == 0
    on_b = _latest(second, "token_shards")
    assert on_b.tags["dagster/input_data_version/tokenizer"] == _latest(first, "tokenizer").tags["dagster/data_version"]
    assert (second / "artifacts" / "splits").is_dir(), "B fetched the upstream artifacts from the bucket"

    # The same shards as machine A computes itself, and both runs are in the one instance.
    monkeypatch.setenv("LMPIPE_HOME", str(first))
    assert main(["run", "--config", str(profile), "--select", "token_shards"]) == 0
    on_a = _latest(first, "token_shards")
    assert on_a.tags["dagster/data_version"] == on_b.tags["dagster/data_version"]
    runs = dg.DagsterInstance.from_config(str(second / "dagster")).get_runs()
    assert len(runs) == 3 and all(r.is_success for r in runs)
    for home in (first, second):
        assert not (home / "dagster" / "storage" / "splits").exists(), "nothing pickled under DAGSTER_HOME"
