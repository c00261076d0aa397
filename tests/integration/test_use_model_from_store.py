"""``lmpipe generate`` and ``lmpipe export`` read the model through the artifact store, as every asset does: with
``LMPIPE_ARTIFACTS_URL`` (a ``file://`` bucket stands in for s3://) a second machine with an empty home samples and
exports the model another machine trained; weights damaged in the bucket, or a tokenizer the model was not trained
with, are refused."""

from __future__ import annotations

import json

from pipelines.cli import main
from tests.integration.conftest import write_profile

TRAIN = {"max_steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 4, "eval_batches": 1, "checkpoint_every": 4}
TINY = {"preset": "tiny", "model": {"context_length": 32}, "train": TRAIN}
GREEDY = ["generate", "--prompt", "The ", "--max-new-tokens", "8", "--seed", "1", "--temperature", "0"]


def test_generate_and_export_read_the_model_from_the_bucket(tmp_path, corpus_dir, capsys, monkeypatch):
    bucket = tmp_path / "bucket"
    monkeypatch.setenv("LMPIPE_ARTIFACTS_URL", f"file://{bucket}")
    monkeypatch.setenv("LMPIPE_HOME", str(tmp_path / "machine-a"))
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], pretrained_model=TINY)
    assert main(["run", "--config", str(profile), "--select", "group:data or key:pretrained_model"]) == 0
    capsys.readouterr()
    assert main(GREEDY) == 0, capsys.readouterr().err
    on_a = capsys.readouterr().out
    assert on_a.startswith("The ")

    # machine B: an empty home (no instance, no run directory, no local artifacts), the same bucket
    monkeypatch.setenv("LMPIPE_HOME", str(tmp_path / "machine-b"))
    assert main(GREEDY) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == on_a, "the same model and tokenizer, fetched from the bucket"
    assert main(["export", str(tmp_path / "hf")]) == 0, capsys.readouterr().err
    assert (tmp_path / "hf" / "model.safetensors").exists()
    trained_with = _in_bucket(bucket, "tokenizer") / "tokenizer.json"
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == trained_with.read_bytes()

    # a tokenizer other than the one the model was trained with is refused, not paired with it
    monkeypatch.setenv("LMPIPE_HOME", str(tmp_path / "machine-a"))
    assert main(["run", "--config", str(profile), "--select", "tokenizer", "--set", "tokenizer.vocab_size=280"]) == 0
    capsys.readouterr()
    assert main(GREEDY) == 2
    assert "is not the one the latest pretrained_model was trained with" in capsys.readouterr().err

    # weights damaged in the bucket: machine C refuses them, naming the file, and loads nothing
    weights = _in_bucket(bucket, "pretrained_model") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("LMPIPE_HOME", str(tmp_path / "machine-c"))
    assert main(GREEDY) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "corrupt" in err


def _in_bucket(bucket, asset: str):
    """The directory of ``asset``'s latest version in the bucket."""
    location = json.loads((bucket / asset / "latest.json").read_text())["location"]
    return bucket / location.removeprefix(f"file://{bucket}/")
