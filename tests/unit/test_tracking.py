"""Experiment trackers: TensorBoard event files and a real local MLflow store read back, each step once
across a crash and resume, bad specs, and the Dagster resource failing before training (W&B:
test_tracking_wandb.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from assets.tracking import TrackerResource
from lmcore.train.summary import TrainSummary
from lmcore.train.trackers import open_tracker
from lmcore.train.tracking import RunInfo

CONFIG = {
    "model": {"n_layer": 2, "n_embd": 32},
    "train": {"lr": 0.001, "betas": [0.9, 0.95], "log_every": 1},
    "world_size": 1,
    "data_version": "ab" * 300,
}


def records(steps: range, offset: float = 0.0) -> list[dict]:
    """What the loop appends to metrics.jsonl: every step logged, val and a checkpoint every 2nd."""
    out = []
    for s in steps:
        r = {
            "step": s,
            "loss": 5.0 - 0.1 * s + offset,
            "lr": 1e-3,
            "grad_norm": 0.5,
            "tokens": 64 * s,
            "tokens_per_s": 1000.0 + s,
            "mfu": None,
        }
        if s % 2 == 0:
            r |= {"val_loss": 6.0 - 0.1 * s + offset, "checkpoint": f"/runs/k/step-{s:08d}"}
        out.append(r)
    return out


def summary(step: int) -> TrainSummary:
    return TrainSummary(
        step=step,
        train_loss=4.2,
        val_loss=4.5,
        tokens_seen=64 * step,
        tokens_per_s=1000.0,
        mfu=None,
        params=12345,
        flops_per_token=6.0e4,
        checkpoint=Path("/runs/k/step-x"),
        checkpoint_url=None,
        run_dir=Path("/runs/k"),
        checkpoint_sha256="ab" * 32,
        resumed_from=None,
        device="cpu",
        dtype="float32",
        world_size=1,
        loss_history=[[1, 4.9]],
        val_history=[],
        realized_mixture=None,
        data={},
    )


def session(
    spec: dict,
    run_dir: Path,
    steps: range,
    resumed_from: int | None,
    offset: float = 0.0,
    done: bool = True,
    config: dict = CONFIG,
) -> None:
    run = RunInfo(run_dir=run_dir, run_key="0123456789abcdef", config=config, resumed_from=resumed_from)
    tracker = open_tracker(spec, run)
    for r in records(steps, offset):
        tracker.log(r)
    tracker.finish(summary(steps[-1]) if done else None)


def read_events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def points(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, round(e.value, 4)) for e in acc.Scalars(tag)]


def test_tensorboard_writes_grouped_scalars_config_and_final_figures(tmp_path):
    session({"kind": "tensorboard"}, tmp_path, range(1, 7), resumed_from=None)
    acc = read_events(tmp_path / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens", "perf/tokens_per_s", "val/loss"} <= tags
    assert "perf/mfu" not in tags and not any("checkpoint" in t for t in tags)  # None and paths are not scalars
    assert points(acc, "train/loss") == [(s, round(5.0 - 0.1 * s, 4)) for s in range(1, 7)]
    assert points(acc, "val/loss") == [(s, round(6.0 - 0.1 * s, 4)) for s in (2, 4, 6)]
    text = {t: acc.Tensors(t) for t in acc.Tags()["tensors"]}
    config = text["config/text_summary"][0].tensor_proto.string_val[0].decode()
    assert '"n_layer": 2' in config
    assert text["status/text_summary"][-1].tensor_proto.string_val[0].decode() == "finished at step 6"
    table = text["summary/text_summary"][0].tensor_proto.string_val[0].decode()
    assert "| final/train_loss | 4.2 |" in table and "| final/params | 12345 |" in table and "mfu" not in table
    hparams = acc.PluginTagToContent("hparams")  # the HPARAMS tab: the config against the last loss values
    assert b"model.n_layer" in hparams["_hparams_/session_start_info"]
    assert b"train/loss" in hparams["_hparams_/experiment"] and b"perf/mfu" not in hparams["_hparams_/experiment"]


def test_tensorboard_resume_leaves_each_step_once(tmp_path):
    spec = {"kind": "tensorboard", "log_dir": str(tmp_path / "tb")}
    session(spec, tmp_path, range(1, 8), resumed_from=None, done=False)  # crashed after step 7
    session(spec, tmp_path, range(5, 11), resumed_from=4, offset=100.0)  # resumed from the step-4 checkpoint
    acc = read_events(tmp_path / "tb" / "0123456789abcdef")
    loss = points(acc, "train/loss")
    assert [s for s, _ in loss] == list(range(1, 11))
    assert loss[3] == (4, 4.6) and loss[4] == (5, round(100 + 4.5, 4))  # the first session's 5..7 are gone
    assert [s for s, _ in points(acc, "val/loss")] == [2, 4, 6, 8, 10]
    # a run that starts over (nothing to resume) drops everything the earlier sessions wrote
    session(spec, tmp_path, range(1, 3), resumed_from=None, offset=50.0)
    assert points(read_events(tmp_path / "tb" / "0123456789abcdef"), "train/loss") == [(1, 54.9), (2, 54.8)]


@pytest.fixture(params=["sqlite", "file"])
def mlflow_uri(request, tmp_path, monkeypatch) -> str:
    if request.param == "file":  # MLflow 3 keeps the file store only on request
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        return (tmp_path / "mlruns").as_uri()
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def mlflow_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, round(m.value, 4)) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_mlflow_run_metrics_params_status_and_resume(tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    spec = {"kind": "mlflow", "tracking_uri": mlflow_uri, "experiment": "exp", "tags": {"lmpipe.asset": "pre"}}
    session(spec, tmp_path, range(1, 8), resumed_from=None, done=False)  # crashed after step 7
    (run,) = mlflow_runs(mlflow_uri, "exp")
    assert run.info.status == "FAILED" and run.info.run_name == "0123456789abcdef"
    assert run.data.tags["lmpipe.asset"] == "pre" and run.data.tags["lmpipe.run_key"] == "0123456789abcdef"
    assert run.data.params["model.n_layer"] == "2" and run.data.params["train.betas"] == "[0.9, 0.95]"
    assert len(run.data.params["data_version"]) == 500 and run.data.params["data_version"].endswith("...")

    resumed = CONFIG | {"train": CONFIG["train"] | {"log_every": 2}}  # a resumable change
    session(spec, tmp_path, range(5, 11), resumed_from=4, offset=100.0, config=resumed)
    (again,) = mlflow_runs(mlflow_uri, "exp")  # the same MLflow run, continued
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    loss = history(mlflow_uri, run.info.run_id, "train/loss")
    assert [s for s, _ in loss] == list(range(1, 11))  # each step once: 5..7 from the first session
    assert loss[6] == (7, 4.3) and loss[7] == (8, 104.2)
    assert [s for s, _ in history(mlflow_uri, run.info.run_id, "val/loss")] == [2, 4, 6, 8, 10]
    assert history(mlflow_uri, run.info.run_id, "final/train_loss") == [(10, 4.2)]
    assert "perf/mfu" not in again.data.metrics and "final/mfu" not in again.data.metrics
    assert again.data.params["train.log_every"] == "1" and again.data.tags["resumed.train.log_every"] == "2"
    assert again.data.tags["lmpipe.resumed_from"] == "4"

    session(spec, tmp_path, range(1, 3), resumed_from=None)  # starting over is a new MLflow run
    assert [r.info.status for r in mlflow_runs(mlflow_uri, "exp")] == ["FINISHED", "FINISHED"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mlflow.db" if "sqlite" in mlflow_uri else "mlruns"])


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"kind": "comet"}, ["kind='comet'", "tensorboard, mlflow, wandb, none"]),
        ({"log_dir": "/tmp"}, ["kind=None", "tensorboard, mlflow, wandb, none"]),
        ("tensorboard", ["must be a dict", "'kind'"]),
        ({"kind": "mlflow", "experiment": "x"}, ["tracking_uri is required", "sqlite:///"]),
        ({"kind": "tensorboard", "tracking_uri": "x", "tag": 1}, ["['tag', 'tracking_uri']", "valid: kind, log_dir"]),
        ({"kind": "mlflow", "tracking_uri": "sqlite:///x.db", "experiment": ""}, ["experiment=''"]),
        ({"kind": "none", "log_dir": "x"}, ["['log_dir'] are not none settings", "valid: kind"]),
        ({"kind": "wandb", "mode": "sometimes"}, ["mode='sometimes' is not a W&B mode", "online, offline"]),
        ({"kind": "wandb", "project": ""}, ["project='' must be a non-empty string or None"]),
        ({"kind": "wandb", "experiment": "x"}, ["['experiment'] are not wandb settings", "dir, entity, mode, project"]),
    ],
)
def test_bad_specs_name_the_field_and_the_choices(tmp_path, spec, words):
    with pytest.raises(ValueError) as e:
        open_tracker(spec, RunInfo(run_dir=tmp_path, run_key="k", config={}, resumed_from=None))
    assert all(w in str(e.value) for w in words), str(e.value)
    assert not any(tmp_path.iterdir())


def test_no_tracker_and_missing_package(tmp_path, monkeypatch):
    run = RunInfo(run_dir=tmp_path, run_key="k", config={}, resumed_from=None)
    assert open_tracker(None, run) is None and open_tracker({"kind": "none"}, run) is None
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lmpipe\[mlflow\]'"):
        open_tracker({"kind": "mlflow", "tracking_uri": "sqlite:///x.db"}, run)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(
        ModuleNotFoundError, match=r"the wandb tracker needs the 'wandb' package: pip install 'lmpipe\[wandb\]'"
    ):
        open_tracker({"kind": "wandb", "mode": "offline"}, run)
    assert not any(tmp_path.iterdir())


def test_resource_spec_and_failing_before_training(tmp_path):
    assert TrackerResource().spec("pretrained_model") == {"kind": "tensorboard"}
    assert TrackerResource(kind="none").spec("pretrained_model") is None
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert TrackerResource(kind="mlflow", tracking_uri=uri, experiment="e").spec("sft_model") == {
        "kind": "mlflow",
        "tracking_uri": uri,
        "experiment": "e",
        "tags": {"lmpipe.asset": "sft_model"},
    }
    assert TrackerResource(kind="wandb", project="p", mode="offline", log_dir="/tb").spec("pretrained_model") == {
        "kind": "wandb",
        "project": "p",
        "mode": "offline",
        "tags": {"lmpipe.asset": "pretrained_model"},
    }, "only the settings of the chosen kind, None left to the tracker's own default"
    with pytest.raises(Exception, match="'tensorboard', 'mlflow', 'wandb' or 'none'"):  # pydantic names the choices
        TrackerResource(kind="comet")
    assert "uploaded later with ``wandb sync``" in TrackerResource.model_fields["mode"].description, (
        "lmcore's doc of the field"
    )

    trained = []

    @dg.asset
    def model(tracker: TrackerResource) -> None:
        trained.append(tracker.spec("model"))

    with pytest.raises(dg.DagsterResourceFunctionError) as e:
        dg.materialize([model], resources={"tracker": TrackerResource(kind="mlflow")}, raise_on_error=True)
    assert "tracking_uri is required" in str(e.value.__cause__) and "resource 'tracker'" in str(e.value.__cause__)
    with pytest.raises(dg.DagsterResourceFunctionError) as e:
        dg.materialize([model], resources={"tracker": TrackerResource(kind="wandb", mode="sometimes")})
    assert "mode='sometimes' is not a W&B mode" in str(e.value.__cause__)
    assert trained == []
