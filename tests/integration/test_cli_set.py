"""``lmpipe run --set ASSET.FIELD=VALUE``: overrides on top of a profile, validated, recorded and reproduced."""

# no `from __future__ import annotations`: Dagster reads the toy asset's config annotation at decoration time

import json
import re
from pathlib import Path

import dagster as dg
import pytest

from lmcore.io import read_json
from pipelines.cli import main
from pipelines.profile import Profile, apply_overrides, validate_profile
from tests.integration.conftest import write_profile

UP_TO_TOKENIZER = "*tokenizer"  # raw_corpus, clean_corpus, splits, tokenizer: no shards, no model


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def _tokenizer_manifest(home: Path) -> dict:
    event = _instance(home).get_latest_materialization_event(dg.AssetKey("tokenizer"))
    return read_json(f"{event.asset_materialization.metadata['artifact_path'].value}/manifest.json")


def _tokenizer_vocab(instance: dg.DagsterInstance, run_id: str) -> int:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    mats = [r.event_log_entry.asset_materialization for r in records]
    (mat,) = [m for m in mats if m.asset_key == dg.AssetKey("tokenizer")]
    return mat.metadata["vocab_size"].value


def test_set_overrides_the_profile_reaches_the_tokenizer_is_tagged_and_reproduce_repeats_it(
    home, tmp_path, corpus_dir, capsys
):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])  # vocab_size: 300
    assert main(["run", "--config", str(profile), "--select", UP_TO_TOKENIZER]) == 0
    sets = ["tokenizer.vocab_size=290", "tokenizer.vocab_size=280"]  # the later one wins
    assert main(["run", "--config", str(profile), "--select", "tokenizer", *(f"--set={s}" for s in sets)]) == 0
    manifest = _tokenizer_manifest(home)
    assert manifest["config"]["vocab_size"] == 280 and manifest["vocab_size"] == 280
    instance = _instance(home)
    overridden, plain = instance.get_runs()  # newest first
    assert "lmpipe/set" not in plain.tags and _tokenizer_vocab(instance, plain.run_id) == 300
    assert json.loads(overridden.tags["lmpipe/set"]) == sets
    assert overridden.run_config["ops"]["tokenizer"]["config"]["vocab_size"] == 280

    assert main(["reproduce", overridden.run_id]) == 0
    (again,) = [r for r in _instance(home).get_runs() if r.tags.get("lmpipe/reproduces") == overridden.run_id]
    assert again.tags["lmpipe/set"] == overridden.tags["lmpipe/set"]
    assert again.run_config["ops"]["tokenizer"]["config"]["vocab_size"] == 280
    assert _tokenizer_vocab(instance, again.run_id) == 280
    from pipelines.runner import data_versions

    assert data_versions(instance, again.run_id) == data_versions(instance, overridden.run_id) != {}
    assert "identical data versions: tokenizer" in capsys.readouterr().out


def test_stale_compares_against_the_overridden_config(home, tmp_path, corpus_dir, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", UP_TO_TOKENIZER]) == 0
    stale = ["run", "--config", str(profile), "--select", UP_TO_TOKENIZER, "--stale"]
    capsys.readouterr()
    assert main([*stale, "--set", "tokenizer.vocab_size=280"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tokenizer +config changed", out) and re.search(r"splits +up to date", out), out
    assert _tokenizer_manifest(home)["config"]["vocab_size"] == 280
    assert main([*stale, "--set", "tokenizer.vocab_size=280"]) == 0
    assert "everything selected is up to date; nothing to run" in capsys.readouterr().out
    runs = len(_instance(home).get_runs())
    assert main([*stale]) == 0  # the profile's 300 differs from the latest (280) materialization
    assert re.search(r"tokenizer +config changed", capsys.readouterr().out)
    assert len(_instance(home).get_runs()) == runs + 1 and _tokenizer_manifest(home)["config"]["vocab_size"] == 300


@pytest.mark.parametrize(
    "sets,messages",
    [
        (["tokenizer.vocab_size280"], ["--set 'tokenizer.vocab_size280': no '='; expected ASSET.FIELD=VALUE"]),
        (["tokenizer=280"], ["--set 'tokenizer=280': 'tokenizer' names no field of an asset (no '.')"]),
        (["tokenizer.=280"], ["--set 'tokenizer.=280': empty asset or field name in 'tokenizer.'"]),
        (["tokenize.vocab_size=280"], ["assets.tokenize: no such configurable asset; choose from", "tokenizer"]),
        (
            ["tokenizer.vocab=280"],
            ["assets.tokenizer.vocab: unknown field; valid fields: ", "min_frequency, sample_bytes, vocab_size"],
        ),
        (["tokenizer.vocab_size=lots"], ["assets.tokenizer.vocab_size: Input should be a valid integer"]),
        (["tokenizer.vocab_size=10"], ["assets.tokenizer: TokenizerConfig.vocab_size=10: must be >= 260"]),
        (["tokenizer.vocab_size=[1,"], ["assets.tokenizer.vocab_size: value '[1,' from --set", "not valid YAML"]),
        (["tokenizer.vocab_size.x=1"], ["assets.tokenizer.vocab_size: is 300, not a mapping"]),
        (["splits.val_fraction=[a, b]"], ["assets.splits.val_fraction: Input should be a valid number", "['a', 'b']"]),
    ],
)
def test_bad_set_exits_2_naming_the_path_and_the_set_before_anything_runs(
    home, tmp_path, corpus_dir, capsys, sets, messages
):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    assert main(["run", "--config", str(profile), "--select", "tokenizer", *(f"--set={s}" for s in sets)]) == 2
    out = capsys.readouterr().out
    assert all(m in out for m in messages), out
    assert f"--set {sets[0]}" in out or f"--set {sets[0]!r}" in out, out  # says where it came from
    assert not (home / "artifacts").exists() and not _instance(home).get_runs()


def test_all_bad_sets_are_reported_together_and_only_the_culprit_is_named(home, tmp_path, corpus_dir, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)])
    sets = ["tokenizer.vocab=1", "splits.val_fraction=lots", "tokenizer.vocab_size=10", "tokenizer.min_frequency=2"]
    assert main(["run", "--config", str(profile), *(f"--set={s}" for s in sets)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert "profile 'p' with its --set overrides is invalid:" in lines[0]
    (unknown,) = [line for line in lines if line.startswith("  assets.tokenizer.vocab: unknown field; valid fields: ")]
    assert unknown.endswith("when_corpus_grows (from --set tokenizer.vocab=1)")
    fraction = [line for line in lines if line.startswith("  assets.splits.val_fraction: ")]
    assert len(fraction) == 1 and fraction[0].endswith("(from --set splits.val_fraction=lots)")
    (vocab,) = [line for line in lines if "TokenizerConfig.vocab_size=10" in line]
    assert vocab.startswith("  assets.tokenizer: ") and vocab.endswith("(from --set tokenizer.vocab_size=10)")
    assert not (home / "artifacts").exists()


def test_profile_errors_do_not_claim_to_come_from_set(home, tmp_path, corpus_dir, capsys):
    profile = write_profile(tmp_path / "p.yaml", [str(corpus_dir)], clean_corpus={"colour": "red"})
    assert main(["run", "--config", str(profile), "--set", "tokenizer.vocab_size=280"]) == 2
    out = capsys.readouterr().out
    assert "assets.clean_corpus.colour: unknown field" in out and "from --set" not in out


def test_apply_overrides_sets_nested_values_parses_yaml_and_resolves_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    profile = Profile(name="p", description="", assets={"pretrained_model": {"preset": "tiny", "train": {"seed": 1}}})
    new = apply_overrides(
        profile,
        [
            "pretrained_model.train.lr=0.002",
            "sft_model.lora.rank=8",
            "sft_model.lora.targets=[attn.c_attn, mlp.c_fc]",
            "pretrained_model.compile=true",
            "pretrained_model.n_layer=null",
            "pretrained_model.preset=demo",
            "pretrained_model.train.lr=0.003",
            "raw_corpus.sources=[books, builtin:python-docs, /abs/texts]",
            "labeled_data.train=labels/train.jsonl",
        ],
    )
    assert new.assets["pretrained_model"] == {
        "preset": "demo",
        "train": {"seed": 1, "lr": 0.003},
        "compile": True,
        "n_layer": None,
    }
    assert new.assets["sft_model"] == {"lora": {"rank": 8, "targets": ["attn.c_attn", "mlp.c_fc"]}}
    assert new.assets["raw_corpus"]["sources"] == [str(tmp_path / "books"), "builtin:python-docs", "/abs/texts"]
    assert new.assets["labeled_data"]["train"] == str(tmp_path / "labels" / "train.jsonl")
    assert profile.assets == {"pretrained_model": {"preset": "tiny", "train": {"seed": 1}}}  # a new Profile
    assert new.overrides[0] == "pretrained_model.train.lr=0.002" and len(new.overrides) == 9


# A small nested config hierarchy, so the recursive unknown-field check is tested whatever the real assets nest.
class Leaf(dg.Config):
    k: int = 0


class Lora(dg.Config):
    rank: int = 0
    leaf: Leaf = Leaf()


class Train(dg.Config):
    lr: float = 1e-3
    lora: Lora = Lora()
    extra: Lora | None = None
    legacy: Lora | None = None


class ToyConfig(dg.Config):
    name: str = "toy"
    train: Train = Train()


@dg.asset
def toy(config: ToyConfig) -> None:
    """Only its config class is used."""


def test_validate_profile_finds_unknown_fields_at_any_nesting_depth():
    values = {
        "nme": "x",
        "train": {
            "lrr": 0.1,
            "lora": {"rank": 2, "rnk": 2, "leaf": {"k": 1, "kk": 2}},
            "extra": {"rank": 1, "x": 1},
            "legacy": None,
        },
    }
    with pytest.raises(ValueError) as exc:
        validate_profile(Profile(name="p", description="", assets={"toy": values}), [toy])
    lines = str(exc.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "assets.toy.nme",
        "assets.toy.train.lrr",
        "assets.toy.train.lora.rnk",
        "assets.toy.train.lora.leaf.kk",
        "assets.toy.train.extra.x",
    ]
    assert "assets.toy.train.lrr: unknown field; valid fields: extra, legacy, lora, lr" in lines[1]
    assert "assets.toy.train.lora.leaf.kk: unknown field; valid fields: k" in lines[3]
    good = {"train": {"lr": 0.1, "lora": {"rank": 2, "leaf": {"k": 3}}, "extra": {"rank": 1}}}
    validate_profile(Profile(name="p", description="", assets={"toy": good}), [toy])


def test_nested_set_errors_name_the_full_path_and_the_set():
    profile = apply_overrides(
        Profile(name="p", description="", assets={}), ["toy.train.lora.leaf.kk=1", "toy.train.lora.rank=lots"]
    )
    with pytest.raises(ValueError) as exc:
        validate_profile(profile, [toy])
    message = str(exc.value)
    assert "assets.toy.train.lora.leaf.kk: unknown field; valid fields: k (from --set toy.train.lora.leaf.kk=1)" in (
        message
    )
    assert "assets.toy.train.lora.rank: Input should be a valid integer" in message
    assert "(from --set toy.train.lora.rank=lots)" in message
