"""The embedded corpus, and so the tokenizer and token shards, are the same on every install.

Two installs are built side by side: a fresh virtual environment, and the base interpreter it
was made from with the packages on ``PYTHONPATH``. Each gets its own copy of ``lmcore`` at its
own path, its own working directory, ``HOME``, ``USER``, ``TMPDIR``, locale, time zone and hash
seed. Each builds ``builtin:python-docs`` with lmcore directly (raw corpus, clean, splits, a
300-token tokenizer, token shards) and digests every file it wrote; the digests must match.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmcore

BUILD = r"""
import hashlib, json, os, sys
from pathlib import Path

import lmcore
from lmcore.data.clean import CleanConfig, clean_corpus
from lmcore.data.corpus import CorpusConfig, build_raw_corpus
from lmcore.data.partitions import partition_of
from lmcore.data.shards import tokenize_partition
from lmcore.data.splits import SplitConfig, split_corpus, split_index, split_rows
from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer
from lmcore.io import read_parquet_rows

out = Path(sys.argv[1])
p = partition_of("python-docs")  # the builtin source is one unit, in one partition
raw = build_raw_corpus(CorpusConfig(), out / "raw", out / "cache", partition=p)
clean = clean_corpus(CleanConfig(), [out / "raw" / s["path"] for s in raw["shards"]], out / "clean")
splits = split_corpus(SplitConfig(), {p: out / "clean"}, out / "splits")
texts = (r["text"] for r in split_rows(out / "splits", splits, "train", ["text"]))
tok = train_tokenizer(TokenizerConfig(vocab_size=300), texts, out / "tokenizer" / "tokenizer.json")
index = split_index(out / "splits", p)
kept = {d: s for d, s in zip(index.column("doc_id").to_pylist(), index.column("split").to_pylist()) if s}
tokenize_partition(tok, [out / "clean" / s["path"] for s in clean["shards"]], kept, out / "shards")

rows = list(read_parquet_rows([out / "raw" / s["path"] for s in raw["shards"]]))
corpus = "".join(r["text"] for r in rows)
here = {
    "python": sys.executable, "prefix": sys.prefix, "lmcore": os.path.dirname(lmcore.__file__),
    "cwd": os.getcwd(), "home": os.environ["HOME"], "user": os.environ["USER"], "tmp": os.environ["TMPDIR"],
}
digests = {
    stage: {str(p.relative_to(out / stage)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / stage).rglob("*")) if p.is_file()}
    for stage in ("raw", "clean", "splits", "tokenizer", "shards")
}
result = {
    "install": here,
    "leaks": sorted(k for k, v in here.items() if v in corpus),
    "raw_bytes": raw["bytes"],
    "documents": {r["source"]: hashlib.sha256(r["text"].encode()).hexdigest() for r in rows},
    "digests": digests,
}
(out / "result.json").write_text(json.dumps(result))
"""


def _install(root: Path, python: str, pythonpath: list[str], *, user: str, locale: str, tz: str, seed: str) -> dict:
    """Start BUILD under ``python`` with lmcore copied under ``root``; returns what ``_finish`` needs."""
    src, work, home, tmp = root / "src", root / "work", root / "home", root / "tmp"
    shutil.copytree(Path(lmcore.__file__).parent, src / "lmcore", ignore=shutil.ignore_patterns("__pycache__"))
    for d in (work, home, tmp):
        d.mkdir(parents=True)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": os.pathsep.join([str(src), *pythonpath]),
        "HOME": str(home),
        "USER": user,
        "LOGNAME": user,
        "TMPDIR": str(tmp),
        "LC_ALL": locale,
        "TZ": tz,
        "PYTHONHASHSEED": seed,
        "OMP_NUM_THREADS": "1",
        "RAYON_NUM_THREADS": "1",
        "POLARS_MAX_THREADS": "1",
    }
    proc = subprocess.Popen(
        [python, "-c", BUILD, str(work / "out")], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    return {"proc": proc, "result": work / "out" / "result.json"}


def _finish(run: dict) -> dict[str, Any]:
    output, _ = run["proc"].communicate(timeout=600)
    assert run["proc"].returncode == 0, output.decode("utf-8", "replace")[-3000:]
    return json.loads(run["result"].read_text())


def _fresh_venv(path: Path, site_dirs: list[str]) -> str:
    """A new virtual environment at ``path`` that sees this one's packages (but not its editable lmcore)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True)
    python = path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "lmpipe-test-deps.pth").write_text("\n".join(site_dirs) + "\n")
    return str(python)


def test_builtin_corpus_tokenizer_and_shards_are_identical_on_two_installs(tmp_path):
    site_dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    venv_python = _fresh_venv(tmp_path / "a" / "venv", site_dirs)
    base_python = getattr(sys, "_base_executable", sys.executable)
    runs = [
        _install(tmp_path / "a", venv_python, [], user="alice-repro", locale="C.UTF-8", tz="UTC", seed="0"),
        _install(
            tmp_path / "second-machine" / "opt" / "b",
            base_python,
            site_dirs,
            user="bob-repro",
            locale="C",
            tz="Asia/Tokyo",
            seed="12345",
        ),
    ]
    a, b = (_finish(run) for run in runs)

    differ = [k for k in a["install"] if a["install"][k] == b["install"][k]]
    assert not differ, f"the two installs share {differ}; the test would prove nothing"
    assert a["leaks"] == [] and b["leaks"] == [], f"install-specific values in the corpus: {a['leaks']}, {b['leaks']}"
    changed = sorted(
        k for k in a["documents"].keys() | b["documents"].keys() if a["documents"].get(k) != b["documents"].get(k)
    )
    assert not changed, f"documents that differ between the installs: {changed[:20]}"
    assert a["raw_bytes"] == b["raw_bytes"] > 1_000_000
    for stage in a["digests"]:
        assert a["digests"][stage] and a["digests"][stage] == b["digests"][stage], f"{stage} differs"
