"""The partitioned data stages for real: incremental re-runs, worker processes, warm-start retraining."""

from __future__ import annotations

import dagster as dg
import yaml

from assets.data.partitions import ALL_PARTITIONS
from lmcore.data.partitions import PARTITIONS, partition_of
from lmcore.io import read_json
from pipelines.cli import main
from pipelines.definitions import build_definitions
from pipelines.profile import load_profile
from tests.integration.conftest import write_profile

TRAIN = {"max_steps": 8, "batch_size": 4, "warmup_steps": 2, "eval_every": 4, "eval_batches": 2, "checkpoint_every": 4}
TINY = {"preset": "tiny", "model": {"context_length": 32}, "train": TRAIN}
NEW_BOOK = "\n\n".join(
    f"Chapter {i}. The lighthouse keeper counted {i * 7} gulls before the storm reached the harbour wall."
    for i in range(40)
)


def _instance(home) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def _latest(home, asset: str, partition: str | None = None) -> dg.AssetMaterialization:
    records = (
        _instance(home)
        .fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
            limit=1,
        )
        .records
    )
    return records[0].asset_materialization


def _value(mat: dg.AssetMaterialization, key: str):
    return mat.metadata[key].value


def _shard_digests(home) -> dict[str, list[str]]:
    manifest = read_json(_value(_latest(home, "token_shards"), "artifact_path") + "/manifest.json")
    return {split: [s["sha256"] for s in info["shards"]] for split, info in manifest["splits"].items()}


def _profile(tmp_path, corpus_dir, **assets):
    return write_profile(tmp_path / "p.yaml", [str(corpus_dir)], **assets)


def test_adding_a_file_reprocesses_only_its_partition(home, tmp_path, corpus_dir):
    profile = _profile(tmp_path, corpus_dir)
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
    before = _shard_digests(home)
    touched = partition_of(f"{corpus_dir.name}/new_book.txt")
    raw_before = {p: _value(_latest(home, "raw_corpus", p), "data_version") for p in PARTITIONS}

    (corpus_dir / "new_book.txt").write_text(NEW_BOOK, encoding="utf-8")
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0

    for asset in ("raw_corpus", "clean_corpus", "tokenized"):
        assert _value(_latest(home, asset), "partitions_rebuilt") == 1, asset
        rebuilt = [p for p in PARTITIONS if _value(_latest(home, asset, p), "rebuilt")]
        assert rebuilt == [touched], asset
    raw = _latest(home, "raw_corpus", touched)
    assert [p for p in PARTITIONS if _value(_latest(home, "raw_corpus", p), "data_version") != raw_before[p]] == [
        touched
    ]
    # the documents cleaned and tokenized again are exactly those of the new file's partition
    cleaned = _value(_latest(home, "clean_corpus"), "documents_cleaned_in_run")
    assert cleaned == _value(raw, "documents") and cleaned < _value(_latest(home, "splits"), "train_documents")
    tokenized = _value(_latest(home, "tokenized"), "documents_tokenized_in_run")
    assert 0 < tokenized == _value(_latest(home, "tokenized", touched), "documents")
    # the tokenizer was kept, so every shard of the other partitions is byte for byte what it was
    assert _value(_latest(home, "tokenizer"), "kept") is True
    after = _shard_digests(home)
    for split in before:
        old_elsewhere = set(before[split]) - set(after[split])
        assert len(old_elsewhere) <= 2, split  # at most the touched partition's old shards (one per source)
        assert len(set(after[split]) - set(before[split])) <= 2, split


def test_two_worker_processes_give_the_shards_of_one(tmp_path, corpus_dir, monkeypatch):
    profile = _profile(tmp_path, corpus_dir)
    digests, logs = {}, {}
    for workers in ("1", "2"):
        home = tmp_path / f"home-{workers}"
        monkeypatch.setenv("LMPIPE_HOME", str(home))
        monkeypatch.setenv("LMPIPE_DATA_WORKERS", workers)
        assert main(["run", "--config", str(profile), "--select", "group:data"]) == 0
        digests[workers] = _shard_digests(home)
        run = _instance(home).get_runs(limit=1)[0]
        logs[workers] = [e.message for e in _instance(home).all_logs(run.run_id) if e.message]
    assert digests["1"] == digests["2"] and sum(map(len, digests["1"].values())) > 3
    assert any("partitions to build, 2 worker(s)" in m for m in logs["2"])
    assert not any("2 worker(s)" in m for m in logs["1"])


def test_retrain_job_warm_starts_from_the_previous_model(home, tmp_path, corpus_dir):
    pretrain = {**TINY, "warm_start": {"init": "previous", "replay_fraction": 0.3}}
    profile = _profile(tmp_path, corpus_dir, pretrained_model=pretrain)
    assert main(["run", "--config", str(profile), "--select", "group:data or key:pretrained_model"]) == 0
    first = _latest(home, "pretrained_model")
    assert _value(first, "init") == "previous" and _value(first, "started_from") == "scratch (no previous model)"

    for i in range(8):  # new books, some of them in the train split (a book's split is a hash of its id)
        (corpus_dir / f"new_book{i}.txt").write_text(NEW_BOOK.replace("gulls", f"gulls of kind {i}"), encoding="utf-8")
    data = yaml.safe_load(profile.read_text())
    defs = build_definitions(load_profile(config_file=profile))
    instance = _instance(home)
    selection = ["raw_corpus", "clean_corpus", "splits", "tokenizer", "tokenized", "token_shards", "pretrained_model"]
    job = defs.resolve_job_def("retrain")  # as launched from the UI or by automation: no run config, the profile's
    result = job.execute_in_process(
        tags=ALL_PARTITIONS, instance=instance, asset_selection=[dg.AssetKey(a) for a in selection]
    )
    assert result.success and data["assets"]["pretrained_model"]["warm_start"]["init"] == "previous"

    second = _latest(home, "pretrained_model")
    assert _value(second, "started_from").startswith(_value(first, "artifact_path"))
    meta = read_json(_value(second, "artifact_path") + "/meta.json")
    assert meta["data"]["init_checkpoint"] == _value(first, "artifact_path")
    assert meta["data"]["init_sha256"] == _value(first, "data_version") and meta["data"]["replay_fraction"] == 0.3
    mixture = _value(second, "realized_mixture_tokens")
    assert set(mixture) == {"new", "replay"} and mixture["new"] > mixture["replay"] > 0
    assert 1 <= _value(_latest(home, "clean_corpus"), "partitions_rebuilt") <= 8


def test_the_derived_tasks_read_every_split_of_the_builtin_corpus(home, tmp_path):
    """labeled_data's derived examples (docstring -> stdlib family) come from the split index's rows, each in its
    document's split."""
    profile = write_profile(
        tmp_path / "p.yaml",
        ["builtin:python-docs"],
        clean_corpus={"min_doc_chars": 200},
        splits={"val_fraction": 0.05, "test_fraction": 0.05},
    )
    assert (
        main(
            [
                "run",
                "--config",
                str(profile),
                "--select",
                "key:raw_corpus or key:clean_corpus or key:splits or key:labeled_data",
            ]
        )
        == 0
    )
    mat = _latest(home, "labeled_data")
    rows = {part: _value(mat, f"{part}_rows") for part in ("train", "validation", "test")}
    assert rows["train"] > 10 * rows["test"] > 0 and rows["validation"] > 0, rows
    assert _value(mat, "classes") >= 3


def test_source_weights_set_the_mixture_of_training_windows(home, tmp_path, corpus_dir):
    """Two sources weighted 3:1: pretraining draws their windows 3:1 whatever their sizes, and says so."""
    other = tmp_path / "other"
    other.mkdir()
    for i in range(6):
        (other / f"log{i}.txt").write_text(NEW_BOOK.replace("gulls", f"ships of fleet {i}"), encoding="utf-8")
    sources = [{"spec": str(corpus_dir), "weight": 3}, {"spec": str(other), "weight": 1}]
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model=TINY)
    data = yaml.safe_load(profile.read_text())
    data["assets"]["raw_corpus"]["sources"] = sources
    profile.write_text(yaml.safe_dump(data))
    assert main(["run", "--config", str(profile), "--select", "group:data or key:pretrained_model"]) == 0
    shards = _latest(home, "token_shards")
    assert _value(shards, "mixing_weights") == {str(corpus_dir): 3.0, str(other): 1.0}
    per_source = _value(shards, "train_tokens_per_source")
    assert set(per_source) == {str(corpus_dir), str(other)} and all(per_source.values())
    mixture = _value(_latest(home, "pretrained_model"), "realized_mixture_tokens")
    drawn = {spec: mixture[spec] for spec in per_source}
    assert abs(drawn[str(corpus_dir)] / sum(drawn.values()) - 0.75) < 0.2, (drawn, per_source)  # unweighted: ~0.25
