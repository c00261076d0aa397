"""``perplexity_report``: the model, an interpolated Kneser-Ney n-gram and an RNN scored on val and test.

The test figures are also kept per document (``splits.test.documents``), so that
``evaluation_report`` can score the test documents that share no 13-gram with the training data.
"""

from typing import Any

import dagster as dg
import torch

from assets.artifacts import Checkpoint, Report, TokenizerFile, TokenShards
from assets.config import RnnSettings
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.eval.perplexity import Scoring, perplexity_comparison

_COLUMNS = [
    dg.TableColumn("split"),
    dg.TableColumn("model"),
    dg.TableColumn("perplexity", "float"),
    dg.TableColumn("bits_per_byte", "float"),
    dg.TableColumn("tokens", "int"),
]


class PerplexityConfig(dg.Config):
    ngram_order: int = 3
    """Order of the Kneser-Ney n-gram baseline fitted on the train split."""
    max_eval_tokens: int | None = None
    """Score at most this many tokens per split (None: all)."""
    batch_size: int = 8
    rnn: RnnSettings = RnnSettings()
    """The RNN baseline fitted on the train split (``cell: none`` leaves it out)."""


def _previous_test_bpb(context: dg.AssetExecutionContext) -> dict[str, Any] | None:
    """The last report's model figures, to compare a retrained model with its predecessor."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return None
    meta = event.asset_materialization.metadata
    if "test_bits_per_byte_model" not in meta:
        return None
    return {"test_bits_per_byte_model": meta["test_bits_per_byte_model"].value, "run_id": event.run_id}


def _row(split: str, who: str, figures: dict[str, Any]) -> dg.TableRecord:
    """One row of the report's table (the baselines' rows come first, then the model's)."""
    return dg.TableRecord(
        {
            "split": split,
            "model": who,
            "perplexity": round(figures["perplexity"], 3),
            "bits_per_byte": round(figures["bits_per_byte"], 4),
            "tokens": figures["tokens"],
        }
    )


@dg.asset(
    group_name="pretrain",
    kinds={"pytorch"},
    pool="gpu",
    code_version=code_version_of(__name__),
)
def perplexity_report(
    context: dg.AssetExecutionContext,
    config: PerplexityConfig,
    pretrained_model: Checkpoint,
    token_shards: TokenShards,
    tokenizer: TokenizerFile,
    store: ArtifactStore,
) -> Report:
    """Perplexity and bits per byte of the model and of an n-gram baseline on val and test.

    After a retrain the report also says how the new model compares with the previous one.
    """
    previous = _previous_test_bpb(context)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    figures = perplexity_comparison(
        pretrained_model.load(device),
        tokenizer.tokenizer,
        {s: token_shards.split(s).arrays for s in ("val", "test")},
        token_shards.split("train").arrays,
        ngram_order=config.ngram_order,
        rnn=config.rnn.to_lmcore(),
        scoring=Scoring(
            max_tokens=config.max_eval_tokens, batch_size=config.batch_size, device=device, per_document=("test",)
        ),
    )
    report = {
        "checkpoint": pretrained_model.location,
        "token_shards": token_shards.data_version,
        "ngram_order": config.ngram_order,
        "splits": figures,
        "previous": previous,
    }
    published = Report.write(store, "perplexity_report", report, name="perplexity")
    rows = [
        _row(s, who, f)
        for s, by in figures.items()
        for who in ("ngram", "rnn", "model")
        if (f := by.get(who)) is not None
    ]
    test_bpb = {who: f["bits_per_byte"] for who, f in figures["test"].items() if who in ("model", "ngram", "rnn")}
    before = previous["test_bits_per_byte_model"] if previous else None
    metadata = {
        "report": dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=_COLUMNS)),
        "test_bits_per_byte_model": round(test_bpb["model"], 4),
        "test_bits_per_byte_ngram": round(test_bpb["ngram"], 4),
        "test_bits_per_byte_rnn": round(test_bpb["rnn"], 4) if "rnn" in test_bpb else None,
        "model_beats_ngram_on_test": test_bpb["model"] < test_bpb["ngram"],
        "test_documents": len(figures["test"]["documents"]["tokens"]),
        "previous_test_bits_per_byte_model": before,
        "change_vs_previous_bits_per_byte": round(test_bpb["model"] - before, 4) if before is not None else None,
    }
    inputs = {"pretrained_model": pretrained_model, "token_shards": token_shards, "tokenizer": tokenizer}
    return result(context, published, metadata, config=config, inputs=inputs)
