"""``variants_report``: the other models the textbooks teach, side by side with the n-gram, the RNN and the
transformer of ``perplexity_report`` (``lmcore.finetune.variants``): mixtures of experts against the dense model
at equal active parameters and tokens, a prefix LM, span corruption and a masked-LM encoder.

Every variant trains in the step's process, one after the other, for the same steps on the same shards;
each resumes from its own run directory. Optional, since it trains six models: the jobs and ``lmpipe run``
materialize it only for a profile that configures it (the ``seeds`` profile) or a ``--select`` that names it.
"""

import dagster as dg

from assets.artifacts import Report, TokenizerFile, TokenShards
from assets.config import ModelOverrides, config_from
from assets.plots import line_chart, utilization_chart
from assets.progress import training_reporter
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.eval.perplexity import token_byte_lengths
from lmcore.finetune.variants import VariantsConfig, VariantsRun, compare_variants
from lmcore.model.gpt import PRESETS

OPTIONAL = {"lmpipe/optional": "true"}
"""Tag of assets that ``lmpipe run`` leaves out unless the profile configures them."""

_COLUMNS = [
    dg.TableColumn("model"),
    dg.TableColumn("objective"),
    dg.TableColumn("active_params", "int"),
    dg.TableColumn("params", "int"),
    dg.TableColumn("val_loss", "float"),
    dg.TableColumn("test_bits_per_byte", "float"),
    dg.TableColumn("masked_accuracy", "float"),
    dg.TableColumn("pseudo_perplexity", "float"),
    dg.TableColumn("train_seconds", "float"),
]


VariantsSettings = config_from(VariantsConfig)


class VariantsReportConfig(VariantsSettings):
    """Every VariantsConfig field, and the base model: a preset and its overrides."""

    preset: str = "demo"
    """The base model's preset; every variant changes it only as VARIANTS says."""
    model: ModelOverrides = ModelOverrides()
    """Fields of the base ModelConfig to replace (n_layer, d_model, ...)."""

    def to_lmcore(self) -> VariantsConfig:
        """The VariantsConfig of every field but ``preset`` and ``model`` (validated too)."""
        return VariantsSettings(**self.model_dump(exclude={"preset", "model"})).to_lmcore()


def _reference_rows(ppl: dict) -> list[dg.TableRecord]:
    test = ppl["splits"]["test"]
    names = {"ngram": f"{ppl['ngram_order']}-gram", "rnn": "rnn", "model": "pretrained_model"}
    empty = dict.fromkeys(c.name for c in _COLUMNS)  # a table's records share their fields
    return [
        dg.TableRecord(
            {**empty, "model": names[who], "objective": "causal", "test_bits_per_byte": round(f["bits_per_byte"], 4)}
        )
        for who in ("ngram", "rnn", "model")
        if (f := test.get(who)) is not None
    ]


def _row(name: str, f: dict) -> dg.TableRecord:
    def r(key: str, digits: int = 4) -> float | None:
        return round(f[key], digits) if f.get(key) is not None else None

    return dg.TableRecord(
        {
            "model": name,
            "objective": f["objective"],
            "active_params": f["active_params"],
            "params": f["params"],
            "val_loss": r("val_loss"),
            "test_bits_per_byte": r("test_bits_per_byte"),
            "masked_accuracy": r("masked_accuracy"),
            "pseudo_perplexity": r("pseudo_perplexity", 2),
            "train_seconds": r("train_seconds", 1),
        }
    )


@dg.asset(group_name="pretrain", kinds={"pytorch"}, pool="gpu", tags=OPTIONAL, code_version=code_version_of(__name__))
def variants_report(
    context: dg.AssetExecutionContext,
    config: VariantsReportConfig,
    token_shards: TokenShards,
    tokenizer: TokenizerFile,
    perplexity_report: Report,
    store: ArtifactStore,
) -> Report:
    """Each variant's own validation loss, test bits per byte, masked-LM figures and expert utilization."""
    if config.preset not in PRESETS:
        raise ValueError(f"preset={config.preset!r}: choose one of {', '.join(sorted(PRESETS))}")
    cfg = config.to_lmcore()
    run = VariantsRun(
        config=cfg,
        base_model=PRESETS[config.preset](vocab_size=token_shards.vocab_size, **config.model.overrides()),
        base_vocab=token_shards.vocab_size,
        shard_root=token_shards.path,
        runs_dir=store.run_dir("variants_report"),
        meta_extra={"tokenizer_sha256": tokenizer.sha256, "data_versions": {"token_shards": token_shards.data_version}},
    )
    reporters = {
        n: training_reporter(context, "variants_report", f"{n} train steps", cfg.train.max_steps) for n in cfg.variants
    }
    test, token_bytes = token_shards.split("test").arrays, token_byte_lengths(tokenizer.tokenizer)
    figures = compare_variants(run, test, token_bytes, callback=lambda name, record: reporters[name](record))
    ppl = perplexity_report.manifest
    report = Report.write(
        store, "variants_report", {"variants": figures, "reference": ppl["splits"]["test"]}, name="variants"
    )
    rows = _reference_rows(ppl) + [_row(name, f) for name, f in figures.items()]
    metadata: dict = {"report": dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=_COLUMNS))}
    curves = {name: f["val_history"] for name, f in figures.items() if f["objective"] == "causal"}
    if curves:
        metadata["dense_vs_moe_val_loss"] = line_chart(
            "causal variants, validation loss", curves, xlabel="step", ylabel="cross-entropy (nats/token)"
        )
    if dense := figures.get("dense"):
        for name, f in figures.items():
            if "experts" in f:
                metadata[f"{name}_minus_dense_val_loss"] = round(f["val_loss"] - dense["val_loss"], 4)
                bpb = f["test_bits_per_byte"] - dense["test_bits_per_byte"]
                metadata[f"{name}_minus_dense_test_bpb"] = round(bpb, 4)
    experts = {name: f["experts"] for name, f in figures.items() if "experts" in f}
    if experts:
        shares = {n: [layer["utilization"] for layer in e["layers"]] for n, e in experts.items()}
        metadata["expert_utilization"] = utilization_chart("expert utilization (validation tokens)", shares)
        for name, e in experts.items():
            dropped = [layer["dropped_fraction"] for layer in e["layers"]]
            metadata[f"{name}_dropped_fraction"] = round(sum(dropped) / len(dropped), 4)
    if masked := figures.get("masked"):
        metadata["masked_accuracy"] = round(masked["masked_accuracy"], 4)
        metadata["pseudo_perplexity"] = round(masked["pseudo_perplexity"], 2)
    inputs = {"token_shards": token_shards, "tokenizer": tokenizer, "perplexity_report": perplexity_report}
    return result(context, report, metadata, config=config, inputs=inputs)
