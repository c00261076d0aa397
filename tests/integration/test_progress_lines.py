"""What ``lmpipe run`` prints while it runs: lines a log can read when stdout is not a terminal, and bars that
close when their stage ends in one."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import dagster as dg
from rich.console import Console

from pipelines.display import Bars, Lines, display
from pipelines.home import PROJECT_ROOT
from tests.integration.conftest import write_profile
from tests.integration.test_pretrain_pipeline import TINY

ASSETS = ["raw_corpus", "clean_corpus", "splits", "tokenizer", "token_shards", "pretrained_model", "perplexity_report"]
_STAMP = r"\d\d:\d\d:\d\d"


def test_a_run_piped_to_a_log_prints_each_stage_and_training_step_as_it_happens(tmp_path, corpus_dir):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model=TINY)
    env = {**os.environ, "LMPIPE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "run",
        "--config",
        str(profile),
        "--select",
        "group:data or group:pretrain",
    ]
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        lines, running_at = [], {}
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            running_at[len(lines) - 1] = proc.poll() is None
        assert proc.wait(timeout=120) == 0, (tmp_path / "stderr").read_text()[-3000:]
    out = "\n".join(lines)
    assert "━" not in out.split("run ", 1)[0], "no progress bar is drawn into a log"
    position = {}
    for asset in ASSETS:
        started = [i for i, x in enumerate(lines) if re.fullmatch(rf"{_STAMP} {asset} started", x)]
        finished = [i for i, x in enumerate(lines) if re.fullmatch(rf"{_STAMP} {asset} finished in \d+\.\ds", x)]
        assert len(started) == len(finished) == 1, f"{asset}: {out}"
        position[asset] = (started[0], finished[0])
    order = [i for asset in ASSETS for i in position[asset]]
    assert order == sorted(order), "each stage starts after the one before it finished, in graph order"
    first_done = position["raw_corpus"][1]
    assert running_at[first_done], "a line reaches the log when it happens, not when the run ends"
    assert re.search(rf"{_STAMP} splits: check splits_disjoint_and_non_empty passed", out)
    steps = [x for x in lines if " pretrained_model: train steps " in x]
    assert re.fullmatch(
        rf"{_STAMP} pretrained_model: train steps 10/12 loss=[\d.]+ lr=\S+ tokens_per_s=\d+ .*", steps[1]
    )
    assert "val_loss=" in steps[-1] and "12/12" in steps[-1], steps
    start, end = position["pretrained_model"]
    assert all(start < lines.index(x) < end for x in steps)
    assert re.search(r"run \w+ succeeded in", out), "the summary table still comes last"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=120)


def test_a_bar_with_an_unknown_total_is_closed_when_its_stage_finishes():
    bars = Bars(_console(True), {"raw_corpus", "pretrained_model"})
    bars.progress("raw_corpus", "documents", 403, None)
    bars.progress("pretrained_model", "train steps", 5, 12)
    by_name = lambda: {t.description: t for t in bars.bar.tasks}  # noqa: E731
    assert not by_name()["raw_corpus: documents"].finished
    bars.stage_started("raw_corpus")
    bars.stage_ended("raw_corpus", "finished")
    done, training = by_name()["raw_corpus: documents"], by_name()["pretrained_model: train steps"]
    assert (done.completed, done.total) == (403, 403) and done.finished and done.stop_time is not None
    assert not training.finished and training.stop_time is None, "another stage's bar keeps running"
    bars.stage_ended("pretrained_model", "failed")
    training = by_name()["pretrained_model: train steps"]
    assert training.total == 12 and not training.finished and training.stop_time is not None, "stopped, not faked"
    assert "raw_corpus finished in" in bars.console.file.getvalue()


def test_lines_throttle_progress_and_print_training_records_at_the_log_interval():
    clock = _Clock()
    lines = Lines(_console(False), {"token_shards", "pretrained_model"}, every_s=30.0, clock=clock)
    lines.stage_started("token_shards")
    for t, done in ((10, 100), (31, 200), (40, 300), (62, 403)):
        clock.now = t
        lines.progress("token_shards", "tokenize documents", done, None)
    clock.now = 75.0
    lines.stage_ended("token_shards", "finished")
    lines.metrics("pretrained_model", "train steps", {"step": 3, "checkpoint": "x"}, 12)
    lines.metrics("pretrained_model", "train steps", {"step": 10, "loss": 5.5123, "lr": 0.001, "mfu": None}, 12)
    printed = [x.split(" ", 1)[1] for x in lines.console.file.getvalue().splitlines()]
    assert printed == [
        "token_shards started",
        "token_shards: tokenize documents 200",
        "token_shards: tokenize documents 403",
        "token_shards finished in 1m15s",
        "pretrained_model: train steps 10/12 loss=5.512 lr=0.001",
    ]


def test_the_display_follows_the_terminal_and_names_steps_after_their_assets():
    keys = {dg.AssetKey("raw_corpus"), dg.AssetKey(["group", "asset"])}
    shown = display(_console(True), keys)
    assert isinstance(shown, Bars) and shown.stages == {"raw_corpus", "group__asset"}
    assert isinstance(display(_console(False), keys), Lines)
    assert isinstance(display(Console(file=io.StringIO(), force_terminal=True, _environ={"TERM": "dumb"}), keys), Lines)
