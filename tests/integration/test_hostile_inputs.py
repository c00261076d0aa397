"""Hostile and unlucky inputs: a killed run does not wedge the next one."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from pipelines.home import PROJECT_ROOT
from tests.integration.conftest import write_profile

TRAIN = {"max_steps": 40, "batch_size": 4, "eval_batches": 1, "checkpoint_every": 4, "log_every": 4, "device": "cpu"}
MODEL = {"preset": "tiny", "model": {"context_length": 32}, "train": TRAIN}


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test():
    """A failed test leaves no CLI run training in the background (each has its own process group)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _cli(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "LMPIPE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "run", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _STARTED.append(proc)
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout:.0f}s (wedged?):\n{out[-4000:]}") from None
    assert proc.returncode == 0, out[-4000:]
    return out


def _latest_mat(home: Path, asset: str) -> dict:
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _kill_9_at_a_checkpoint(home: Path, profile: str, asset: str, last: int) -> None:
    """Start ``--select asset`` and kill -9 its process group once one of its runs (``runs/<key>/`` or, for the
    classifiers, ``runs/<method>/<key>/``) wrote a checkpoint at step 8 or later, before its ``last``."""
    proc = _cli(home, "--config", profile, "--select", asset)
    deadline = time.monotonic() + 300
    runs = home / "artifacts" / asset / "runs"
    while not _checkpoints_between(runs, 8, last):
        assert proc.poll() is None and time.monotonic() < deadline, f"{asset} ended before its second checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _checkpoints_between(runs: Path, first: int, last: int) -> list[Path]:
    """The checkpoints of steps ``first`` .. ``last - 1`` under ``runs``; none while a directory it was listing is
    renamed away (a checkpoint's staging directory becoming its published one)."""
    try:
        return [p for p in runs.rglob("step-*/meta.json") if first <= int(p.parent.name[5:]) < last]
    except FileNotFoundError:
        return []


def _no_slot_held(home: Path) -> None:
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        slots = instance.event_log_storage.get_concurrency_info("gpu")
        assert slots.active_slot_count == 0 and slots.pending_step_count == 0, slots  # nothing held after the run


def _checkpoint(home: Path) -> tuple[str, int, str]:
    _no_slot_held(home)
    meta = _latest_mat(home, "pretrained_model")
    return meta["checkpoint_sha256"], meta["steps"], meta["resumed_from"]


def test_kill_9_during_training_releases_its_gpu_slot_and_the_rerun_resumes_exactly(tmp_path, corpus_dir):
    """kill -9 of the whole process group while pretrained_model holds the ``gpu`` pool's slot: the next run of the
    same selection frees the dead run's slot (it used to wait for it forever at 100% CPU), resumes from the last
    checkpoint, and ends with the weights of an uninterrupted run in another home."""
    profile = str(write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model=MODEL))
    home, reference = tmp_path / "home", tmp_path / "reference"
    _finish(_cli(home, "--config", profile, "--select", "group:data"))
    _kill_9_at_a_checkpoint(home, profile, "pretrained_model", last=40)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 1  # held by the dead run

    out = _finish(_cli(home, "--config", profile, "--select", "pretrained_model"), timeout=300)
    assert "marked run" in out and "failed" in out
    digest, steps, resumed = _checkpoint(home)
    assert steps == 40 and 8 <= int(resumed) < 40

    _finish(_cli(reference, "--config", profile, "--select", "group:data or key:pretrained_model"))
    assert _checkpoint(reference) == (digest, 40, "None")


def _lines(proc: subprocess.Popen) -> tuple[list[str], threading.Thread]:
    """The output lines of ``proc`` as they come, and the thread that appends them (it ends with the output)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    return lines, reader


def _wait_for(proc: subprocess.Popen, lines: list[str], text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, f"no {text!r} in:\n{''.join(lines)[-3000:]}"
        time.sleep(0.05)


STEPS = 80
"""Steps of the SFT and classifier runs that a kill -9 interrupts: a wide window to catch them in on a fast machine."""


def test_kill_9_during_sft_and_the_classifiers_the_rerun_resumes_to_the_uninterrupted_result(tmp_path, corpus_dir):
    """The kill -9 case of pretrained_model (above), for sft_model and classifier_report: the rerun of the same
    selection frees the dead run's gpu slot, resumes from the checkpoint, and ends where an uninterrupted run does."""
    from tests.integration.test_finetune_pipeline import _tasks

    labels, sft = _tasks(tmp_path)
    steps = {
        "max_steps": STEPS,
        "batch_size": 2,
        "warmup_steps": 1,
        "eval_every": 20,
        "eval_batches": 1,
        "checkpoint_every": 4,
        "log_every": 4,
    }
    profile = str(
        write_profile(
            tmp_path / "p.yaml",
            [str(corpus_dir)],
            pretrained_model={**MODEL, "train": {**TRAIN, "max_steps": 8}},
            labeled_data=labels,
            sft_dataset={"records": [sft], "holdout_fraction": 0.4, "pack": True},
            sft_model={"train": steps},
            classifier_report={"methods": ["head", "bow"], "head": steps},
        )
    )
    home, reference = tmp_path / "home", tmp_path / "reference"
    before = "group:data or key:pretrained_model or key:sft_dataset or key:labeled_data"
    _finish(_cli(home, "--config", profile, "--select", before))
    for asset in ("sft_model", "classifier_report"):
        _kill_9_at_a_checkpoint(home, profile, asset, last=STEPS)
        out = _finish(_cli(home, "--config", profile, "--select", asset), timeout=300)
        assert "marked run" in out and "failed" in out, out
    _finish(_cli(reference, "--config", profile, "--select", f"{before} or key:sft_model or key:classifier_report"))
    sft_home, sft_reference = _latest_mat(home, "sft_model"), _latest_mat(reference, "sft_model")
    assert 8 <= int(sft_home["resumed_from"]) < STEPS and sft_reference["resumed_from"] == "None"
    assert sft_home["checkpoint_sha256"] == sft_reference["checkpoint_sha256"] and sft_home["steps"] == STEPS
    figures = [k for k in _latest_mat(reference, "classifier_report") if k.endswith(("_accuracy", "_macro_f1"))]
    assert "head_accuracy" in figures
    assert [_latest_mat(home, "classifier_report")[k] for k in figures] == [
        _latest_mat(reference, "classifier_report")[k] for k in figures
    ]
    _no_slot_held(home)


def test_a_run_that_waits_for_a_slot_says_for_what_and_a_killed_waiter_wedges_nothing(tmp_path, corpus_dir):
    """A second run of pretrained_model waits for the ``gpu`` pool's one slot while the first trains: it says what
    it waits for, held by whom and since when (it used to sit silent). kill -9 of both (the waiter left a pending
    claim) does not wedge the next run: it starts training at once."""
    train = {**TRAIN, "max_steps": 100_000}
    profile = str(write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model={**MODEL, "train": train}))
    home = tmp_path / "home"
    _finish(_cli(home, "--config", profile, "--select", "group:data"))
    first = _cli(home, "--config", profile, "--select", "pretrained_model")
    _wait_for(first, _lines(first)[0], "train steps 8/")
    second = _cli(home, "--config", profile, "--select", "pretrained_model")
    waiting, _ = _lines(second)
    _wait_for(second, waiting, "waits for a free slot")
    out = " ".join("".join(waiting).split())
    assert "pretrained_model waits for a free slot of the 'gpu' concurrency pool (1 slot(s), held by " in out, out
    assert "pretrained_model of run " in out and " since " in out, out
    for proc in (second, first):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    third = _cli(home, "--config", profile, "--select", "pretrained_model")
    _wait_for(third, _lines(third)[0], "pretrained_model: train steps", timeout=120)  # resumed, training
    third.send_signal(signal.SIGTERM)
    assert third.wait(timeout=60) == 130


def _stopped_by_sigterm(proc: subprocess.Popen, when: str, home: Path) -> str:
    """Send SIGTERM to the CLI process alone (what ``timeout``, a scheduler or Dagster's terminate do) once a line
    of its output contains ``when``; it must end within seconds, marking its run canceled."""
    lines, reader = _lines(proc)
    _wait_for(proc, lines, when)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 130, out[-3000:]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.get_runs(limit=1)[0].status == dg.DagsterRunStatus.CANCELED
    assert not list(home.rglob("*staging*")), list(home.rglob("*staging*"))  # nothing half-written is left
    return " ".join(out.split())


def test_sigterm_stops_a_run_within_seconds_in_tokenizer_training_and_in_pretraining(tmp_path, corpus_dir):
    """SIGTERM used to wait for HF's BPE trainer to return (hours, on a long run without spaces): the trainer now
    works in a child process, so the run stops at once, is marked canceled and exits 130; in pretraining too, and
    the same command then resumes from the last checkpoint."""
    letters = "".join("abcdefghijklmnop"[(i * i + i // 7) % 16] for i in range(600_000))
    (corpus_dir / "no_spaces.txt").write_text(letters)  # unbounded (max_word_chars: 0), BPE on it takes minutes
    slow = {
        "clean_corpus": {"min_doc_chars": 20, "max_doc_chars": 0},
        "tokenizer": {"vocab_size": 2000, "max_word_chars": 0},
    }
    profile = str(write_profile(tmp_path / "slow.yaml", [str(corpus_dir)], **slow))
    home = tmp_path / "slow"
    started = time.monotonic()
    out = _stopped_by_sigterm(_cli(home, "--config", profile, "--select", "group:data"), "tokenizer started", home)
    assert time.monotonic() - started < 120, "the tokenizer was not stopped at once"
    assert "tokenizer stopped: the run was interrupted (Ctrl-C or SIGTERM) and is marked canceled" in out, out

    (corpus_dir / "no_spaces.txt").unlink()
    train = {**TRAIN, "max_steps": 400}
    profile = str(write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model={**MODEL, "train": train}))
    home = tmp_path / "home"
    _finish(_cli(home, "--config", profile, "--select", "group:data"))
    out = _stopped_by_sigterm(_cli(home, "--config", profile, "--select", "pretrained_model"), "train steps 8/", home)
    assert "pretrained_model stopped: the run was interrupted" in out, out
    _finish(_cli(home, "--config", profile, "--select", "pretrained_model"), timeout=300)
    _, steps, resumed = _checkpoint(home)
    assert steps == 400 and 8 <= int(resumed) < 400


def test_a_version_that_failed_a_blocking_check_is_not_used_by_a_later_run(home, tmp_path, corpus_dir, capsys):
    """splits fails splits_disjoint_and_non_empty (an empty test split): that run stops, and a later run of what is
    downstream refuses that splits version, naming the check and its reason, instead of publishing shards without a
    test split."""
    from pipelines.cli import main

    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], splits={"val_fraction": 0.2, "test_fraction": 1e-6})
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 1
    first = capsys.readouterr().out
    assert "check splits_disjoint_and_non_empty of splits failed: the test split is empty" in first, first
    assert main(["run", "--config", str(profile), "--select", "tokenizer+"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "failed its blocking check splits_disjoint_and_non_empty: the test split is empty" in out, out
    assert not (home / "artifacts" / "token_shards").exists()


def test_a_source_folder_means_its_files(home, tmp_path, corpus_dir, capsys):
    """A symlink out of the folder is refused naming link and target (links_out: follow reads it); a symlinked
    folder and a FIFO are passed over and counted; a link that stays inside is read."""
    from lmcore.data.corpus import CorpusConfig, build_raw_corpus
    from pipelines.cli import main

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("a private file that lives outside the corpus folder, not to be read " * 3)
    (corpus_dir / "passwd.txt").symlink_to(outside / "secret.txt")
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "raw_corpus"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"{corpus_dir / 'passwd.txt'} is a symlink to {outside / 'secret.txt'}, outside the source folder" in out
    assert "raw_corpus.links_out: follow" in out

    (corpus_dir / "passwd.txt").unlink()
    (corpus_dir / "inside.txt").symlink_to(corpus_dir / "doc00.txt")  # stays inside: read
    (corpus_dir / "elsewhere").symlink_to(outside, target_is_directory=True)
    os.mkfifo(corpus_dir / "pipe.txt")
    manifest = build_raw_corpus(CorpusConfig(sources=(str(corpus_dir),)), tmp_path / "raw", tmp_path / "cache")
    assert manifest["skipped"] == {"symlinked_folder": 1, "special_file": 1}, manifest["skipped"]
    assert manifest["documents"] == 20 + 1 + len((corpus_dir / "more.jsonl").read_text().splitlines())

    (corpus_dir / "passwd.txt").symlink_to(outside / "secret.txt")
    followed = CorpusConfig(sources=(str(corpus_dir / "*.txt"),), links_out="follow")
    read = build_raw_corpus(followed, tmp_path / "raw2", tmp_path / "cache")
    assert read["documents"] == 20 + 2 and read["skipped"] == {"special_file": 1}  # doc*, inside, passwd; the FIFO


class _Endless(http.server.BaseHTTPRequestHandler):
    """GET streams without end: fast (``/endless.txt``) or one byte every 0.2 s (``/trickle.txt``); no validators."""

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        chunk, pause = (b"x", 0.2) if "trickle" in self.path else (b"words and more words\n" * 3000, 0.0)
        try:
            while True:
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def endless_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_downloads_are_bounded_in_size_and_time(tmp_path, endless_server):
    """A server that streams forever is stopped at max_download_bytes, one that trickles at download_deadline_s;
    each error names its setting (it used to write 2.6 GB a minute, or hang with no output)."""
    from lmcore.data.corpus import CorpusConfig, build_raw_corpus

    endless = CorpusConfig(sources=(f"{endless_server}/endless.txt",), retries=0, max_download_bytes=4 << 20)
    with pytest.raises(ValueError, match=r"endless.txt: more than max_download_bytes=4,194,304 bytes"):
        build_raw_corpus(endless, tmp_path / "raw", tmp_path / "cache")
    started = time.monotonic()
    trickle = CorpusConfig(sources=(f"{endless_server}/trickle.txt",), retries=0, download_deadline_s=2)
    with pytest.raises(TimeoutError, match=r"trickle.txt: the download took over download_deadline_s=2 s"):
        build_raw_corpus(trickle, tmp_path / "raw2", tmp_path / "cache")
    assert time.monotonic() - started < 30
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == [], leftovers  # no partial body left behind


def _latest(home: Path, asset: str) -> Path:
    return Path(_json(home / "artifacts" / asset / "latest.json")["location"])


def _run(home: Path, profile: str, select: str) -> tuple[int, str]:
    proc = _cli(home, "--config", profile, "--select", select)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, " ".join(out.split())


def test_a_damaged_artifact_is_named_when_read_and_rebuilt_by_the_next_run(tmp_path, corpus_dir):
    """Readers check every published file against the SHA256SUMS written at publish: a token shard with 4 ids
    changed (same size, valid Arrow) used to train pretrained_model with exit 0, and an edited tokenizer.json was
    used to tokenize. Now each is named with the fix, and the next run of its asset rebuilds it instead of reusing
    it (also the version that shares the damaged file by hard link)."""
    from lmcore.io import sha256_file

    profile = str(write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model=MODEL))
    home = tmp_path / "home"
    _finish(_cli(home, "--config", profile, "--select", "group:data"))
    shards = _latest(home, "token_shards")
    shard = sorted((shards / "train").glob("*.arrow"))[0]
    digest = sha256_file(shard)
    data = bytearray(shard.read_bytes())
    data[-64:-48] = bytes(16)  # 4 uint32 ids near the end of the last buffer: same size, still valid Arrow
    shard.write_bytes(bytes(data))

    code, out = _run(home, profile, "pretrained_model")
    assert code == 1 and f"{shard} is damaged: its sha256 is" in out, out
    assert "hard-linked into 1 other published file(s), damaged too" in out, out
    assert "materialize token_shards again (lmpipe run --select 'token_shards+')" in out, out
    code, out = _run(home, profile, "token_shards")  # its input, the tokenized partition, shares the file
    assert code == 1 and "materialize tokenized again" in out, out
    code, out = _run(home, profile, "key:tokenized or key:token_shards")
    assert code == 0, out
    assert _latest(home, "token_shards") == shards and sha256_file(shard) == digest  # the same version, whole again

    tokenizer = _latest(home, "tokenizer") / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"merges":[[', '"merges":[', 1).replace("]],", "],", 1))
    code, out = _run(home, profile, "tokenized")
    assert code == 1 and f"{tokenizer} is damaged" in out, out
    code, out = _run(home, profile, "tokenizer")  # when_corpus_grows: keep no longer keeps the damaged file
    assert code == 0, out
    assert sha256_file(tokenizer) == _json(tokenizer.parent / "manifest.json")["sha256"]

    truncated = sorted((shards / "val").glob("*.arrow"))[0]
    truncated.write_bytes(truncated.read_bytes()[:100])
    code, out = _run(home, profile, "pretrained_model")
    assert code == 1 and f"{truncated} is damaged" in out and "ArrowInvalid" not in out, out


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _one_document(shape: str) -> str:
    """About 2 MiB of one document: a book (not ASCII), one wrapped paragraph, or a run of one-word lines."""
    if shape == "book":
        book = (Path(__file__).parents[1] / "fixtures" / "clean" / "gutenberg_sample.txt").read_text(encoding="utf-8")
        return book * ((2 << 20) // len(book) + 1)
    if shape == "paragraph":
        return "\n".join(["the quick brown fox jumps over the lazy dog and then it runs far away from"] * 28_000)
    return "\n".join(f"w{i}" for i in range(300_000))


@pytest.mark.parametrize("shape", ["book", "paragraph", "short_lines"])
@pytest.mark.parametrize("max_doc_chars", [20_000, 0])
def test_one_document_costs_a_small_multiple_of_its_size_in_cleaning(shape, max_doc_chars):
    """Cleaning held every line of a document as a Python object beside two copies of it (13.8x the text for a
    text of short lines), and a long paragraph was joined line by line into a growing string (quadratic time: a
    5 MiB paragraph took 124 s). Python's own allocations while one document is cleaned now stay under 3.5x the
    text's size, whatever its shape and max_doc_chars (benchmarks/document_memory.py measures the whole stage)."""
    import tracemalloc

    from lmcore.data.clean import CleanConfig, clean_documents

    text = _one_document(shape)
    size = sys.getsizeof(text)
    chunks = clean_documents(iter([text]), CleanConfig(max_doc_chars=max_doc_chars))
    tracemalloc.start()
    try:
        del text  # from here on, clean_documents holds the only reference, as in clean_corpus
        out = next(chunks)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out and peak < 3.5 * size, f"{shape}: peak {peak / size:.2f}x the text"


def test_document_shards_carry_no_dictionary_or_statistics_of_the_text(tmp_path):
    """A min/max statistic and a dictionary page of ``text`` copied a 50 MiB document twice more while its shard
    was written (the raw stage peaked at 12x a document's size); other columns keep both."""
    import pyarrow.parquet as pq

    from lmcore.data.clean import CleanConfig, clean_corpus
    from lmcore.data.corpus import CorpusConfig, build_raw_corpus

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("Some prose that is long enough to keep. " * 20, encoding="utf-8")
    build_raw_corpus(CorpusConfig(sources=(str(tmp_path / "corpus"),)), tmp_path / "raw", tmp_path / "cache")
    raw = sorted((tmp_path / "raw").glob("part-*.parquet"))
    clean_corpus(CleanConfig(), raw, tmp_path / "clean")
    for shard in [*raw, *sorted((tmp_path / "clean").glob("part-*.parquet"))]:
        row_group = pq.ParquetFile(shard).metadata.row_group(0)
        columns = {row_group.column(i).path_in_schema: row_group.column(i) for i in range(row_group.num_columns)}
        assert not columns["text"].is_stats_set and not columns["text"].has_dictionary_page, shard
        assert columns["doc_id"].is_stats_set and columns["doc_id"].has_dictionary_page, shard
