"""Bad inputs through the real CLI: each fails naming the file, field or path and the fix, and loses nothing.

One test per item of "Bad inputs that still get through" in issue 12.
"""

from __future__ import annotations

import errno
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import zstandard

from lmcore.io import read_json
from pipelines.cli import main, ui_command
from pipelines.home import PROJECT_ROOT
from tests.integration.conftest import write_profile


def _versions(home: Path, asset: str) -> dict[str, int]:
    root = home / "artifacts" / asset
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _staging(home: Path) -> list[Path]:
    return sorted((home / "artifacts").glob("*/.staging-*"))


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home / "dagster"))


# 1. and 2. -----------------------------------------------------------------------------------


def test_truncated_zst_fails_the_run_naming_the_file_and_keeps_the_previous_corpus(home, tmp_path, capsys):
    books = tmp_path / "books"
    books.mkdir()
    book = "".join(f"Line {i} of a book that is long enough to compress well.\n" for i in range(20_000)).encode()
    whole = zstandard.ZstdCompressor().compress(book)
    (books / "book.txt.zst").write_bytes(whole)
    profile = write_profile(tmp_path / "p.yaml", [str(books)])
    assert main(["run", "--config", str(profile), "--select", "raw_corpus"]) == 0
    before = _versions(home, "raw_corpus")
    (books / "book.txt.zst").write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    assert main(["run", "--config", str(profile), "--select", "raw_corpus"]) == 1
    out = capsys.readouterr().out
    assert f"{books / 'book.txt.zst'}: truncated/corrupt archive" in out and "zstd -t" in out
    assert "invalid_utf8" not in out
    assert _versions(home, "raw_corpus") == before and not _staging(home)


# 3. ------------------------------------------------------------------------------------------


def test_vocab_size_beyond_the_bound_is_rejected_before_anything_runs(home, tmp_path, corpus_dir, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--set", "tokenizer.vocab_size=100000000000"]) == 2
    out = capsys.readouterr().out
    assert "assets.tokenizer: TokenizerConfig.vocab_size=100000000000: must be <= 1048576" in out
    assert not (home / "artifacts").exists() and not _instance(home).get_runs()


# 4. ------------------------------------------------------------------------------------------


class _Hang(http.server.BaseHTTPRequestHandler):
    """A download that never arrives: the validator comes at once (so the partition's inputs are known and
    its stage starts), the body hangs."""

    def do_GET(self) -> None:  # noqa: N802
        self.server.release.wait(120)  # type: ignore[attr-defined]
        self.send_error(503)

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("ETag", '"slow-book"')
        self.send_header("Content-Length", "100")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def hanging_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hang)
    server.daemon_threads = True
    server.release = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/book.txt"
    server.release.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_kill_9_during_a_stage_is_cleaned_up_and_marked_failed_on_the_next_run(
    home, tmp_path, corpus_dir, hanging_url, capsys
):
    hang = write_profile(tmp_path / "hang.yaml", [hanging_url], raw_corpus={"retries": 0, "timeout_s": 120})
    env = {**os.environ, "LMPIPE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--config", str(hang), "--select", "raw_corpus"]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not _staging(home) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _staging(home), "the run never reached its stage"
        runs = _instance(home).get_runs()
        assert [r.status for r in runs] == [dg.DagsterRunStatus.STARTED]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    good = write_profile(tmp_path / "good.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(good), "--select", "raw_corpus"]) == 0
    out = capsys.readouterr().out
    assert "left by a killed run" in out and f"marked run {runs[0].run_id[:8]} failed" in out
    assert not _staging(home)
    assert _instance(home).get_run_by_id(runs[0].run_id).status == dg.DagsterRunStatus.FAILURE


# 5. ------------------------------------------------------------------------------------------


def test_profile_with_a_yaml_syntax_error_exits_2_naming_file_and_line(home, tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("assets:\n  raw_corpus:\n    sources: [a\n  tokenizer: {vocab_size: 300}\n")
    assert main(["run", "--config", str(path)]) == 2
    out = capsys.readouterr().out
    assert f"{path}:4:12: not valid YAML" in out and "starts at line 3" in out and "<unicode string>" not in out


def test_asset_config_that_is_not_a_mapping_names_the_asset(home, tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("assets:\n  raw_corpus: [x]\n")
    assert main(["run", "--config", str(path)]) == 2
    assert "assets.raw_corpus: expected a mapping of field: value, got a list" in capsys.readouterr().out


# 6. ------------------------------------------------------------------------------------------


def test_home_that_cannot_be_created_names_the_path_and_the_fix(tmp_path, monkeypatch, capsys):
    not_a_dir = tmp_path / "home"
    not_a_dir.write_text("a file, where the home directory should be")  # root ignores permissions; this it cannot
    monkeypatch.setenv("LMPIPE_HOME", str(not_a_dir))
    assert main(["run", "--select", "raw_corpus"]) == 2
    err = capsys.readouterr().err
    assert f"{not_a_dir / 'dagster'}: a file is where a directory must be" in err and "point LMPIPE_HOME at" in err
    assert "Traceback" not in err


def test_full_disk_in_the_instance_names_the_home(home, monkeypatch, capsys):
    import sqlite3

    import sqlalchemy.exc

    def full(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(dg.DagsterInstance, "get", full)
    assert main(["run", "--select", "raw_corpus"]) == 2
    err = capsys.readouterr().err
    assert f"{home}: the disk is full" in err and "free space on it" in err


def test_full_disk_while_writing_an_artifact_names_the_path_and_keeps_old_versions(
    home, tmp_path, corpus_dir, monkeypatch, capsys
):
    import lmcore.io

    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "raw_corpus"]) == 0
    before = _versions(home, "raw_corpus")

    def no_space(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lmcore.io.ParquetShardWriter, "_flush", no_space)
    capsys.readouterr()
    (corpus_dir / "added.txt").write_text("A new file, so its partition is built again (in this process). " * 9)
    assert main(["run", "--config", str(profile), "--select", "raw_corpus"]) == 1
    out = capsys.readouterr().out
    assert f"raw_corpus failed: OSError: [Errno 28] {home}: the disk is full" in out and "LMPIPE_HOME" in out
    assert _versions(home, "raw_corpus") == before and not _staging(home)


# 7. ------------------------------------------------------------------------------------------


def test_retries_timeout_and_max_document_bytes_are_real_fields_that_reach_the_reader(home, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "small.txt").write_text("A short document. " * 10)
    (docs / "large.txt").write_text("A long document. " * 200)  # > 1000 bytes
    fields = {"retries": 1, "timeout_s": 2, "max_document_bytes": 1000, "backoff_s": 0.01}
    profile = write_profile(tmp_path / "p.yaml", [str(docs)], raw_corpus=fields)
    assert main(["run", "--config", str(profile), "--select", "raw_corpus"]) == 0
    records = _instance(home).fetch_materializations(dg.AssetKey("raw_corpus"), limit=16).records  # one per partition
    manifests = [
        read_json(Path(r.asset_materialization.metadata["artifact_path"].value) / "manifest.json") for r in records
    ]
    assert sum(m["documents"] for m in manifests) == 1
    assert [m["skipped"] for m in manifests if m["skipped"]] == [{"too_large": 1}]
    closed = _free_port()  # nothing listens there once it is closed
    url = write_profile(tmp_path / "url.yaml", [f"http://127.0.0.1:{closed}/book.txt"], raw_corpus=fields)
    capsys.readouterr()
    assert main(["run", "--config", str(url), "--select", "raw_corpus"]) == 1
    out = capsys.readouterr().out
    assert f"127.0.0.1:{closed}/book.txt after 2 attempt(s)" in out and "raise `retries`/`timeout_s`" in out


# 8. ------------------------------------------------------------------------------------------


def test_a_failure_is_reported_last_and_set_apart_with_the_full_log_in_a_file(home, tmp_path, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(tmp_path / "nowhere")])
    assert main(["run", "--config", str(profile), "--select", "raw_corpus+"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert "Stack Trace" not in "\n".join(lines) and " - dagster - ERROR - " not in "\n".join(lines)
    assert "what failed" in lines[-3]
    assert lines[-2].startswith("raw_corpus failed: FileNotFoundError: source ") and "nowhere" in lines[-2]
    log = Path(lines[-1].split("full log: ", 1)[1].split(" and the Dagster UI", 1)[0])
    assert (
        log.parent == home / "logs"
        and "Stack Trace" in log.read_text()
        and "STEP_FAILURE raw_corpus" in (log.read_text())
    )


# 9. ------------------------------------------------------------------------------------------


def test_a_corpus_cleaning_drops_entirely_says_why(home, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(["tiny doc one.", "tiny two.", "three"]):
        (docs / f"{i}.txt").write_text(text)
    profile = write_profile(tmp_path / "p.yaml", [str(docs)], clean_corpus={"min_doc_chars": 200})
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 1
    out = capsys.readouterr().out
    assert (
        "check splits_disjoint_and_non_empty of splits failed: all 3 documents were dropped: too_short 3; "
        "lower min_doc_chars (now 200)"
    ) in out


def test_a_corpus_too_small_to_split_says_which_split_is_empty_and_why(home, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    words = [f"word{i * 7919 % 1000}" for i in range(150)]  # not repetitive and < max_doc_chars: one document
    (docs / "only.txt").write_text(" ".join(words))
    profile = write_profile(tmp_path / "p.yaml", [str(docs)], splits={"val_fraction": 0.05, "test_fraction": 0.05})
    assert main(["run", "--config", str(profile), "--select", "group:data"]) == 1
    out = capsys.readouterr().out
    # one document lands in one split (by its hash); the other two are named, with the fix
    assert re.search(
        r"check splits_disjoint_and_non_empty of splits failed: the (train|val|test) and (val|test) splits are empty: "
        r"1 document in all \(val_fraction=0\.05, test_fraction=0\.05\); add documents",
        out,
    )


def test_a_vocabulary_that_was_not_reached_warns(home, tmp_path, corpus_dir, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], tokenizer={"vocab_size": 4096})
    assert main(["run", "--config", str(profile), "--select", "*tokenizer"]) == 0
    out = capsys.readouterr().out
    event = _instance(home).get_latest_materialization_event(dg.AssetKey("tokenizer"))
    reached = event.asset_materialization.metadata["vocab_size"].value
    assert reached < 4096
    warning = f"the vocabulary reached {reached} of vocab_size=4096 tokens"
    assert warning in event.asset_materialization.metadata["warning"].value
    assert f"warning: tokenizer: {warning}" in out


# 10. -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_runs_dg_dev_from_this_environment_without_the_venv_on_path(tmp_path):
    command = ui_command(3000)
    assert Path(command[0]) == Path(sys.executable).parent / "dg" and command[1:3] == ["dev", "--use-active-venv"]
    lmpipe = Path(sys.executable).parent / "lmpipe"
    if not lmpipe.exists():
        pytest.skip(f"{lmpipe}: no lmpipe script beside the interpreter (not an installed venv)")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME",)}
    env |= {"PATH": "/usr/bin:/bin", "LMPIPE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [str(lmpipe), "ui", "--port", str(_free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline, argv = time.monotonic() + 60, []
        while proc.poll() is None and time.monotonic() < deadline:
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            if any(a.endswith(b"/dg") for a in argv) and b"dev" in argv:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        dg = next(Path(a.decode()) for a in argv if a.endswith(b"/dg"))  # the dg script, run by the venv's python
        assert dg.parent == lmpipe.parent and argv[argv.index(bytes(dg)) + 1] == b"dev"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
