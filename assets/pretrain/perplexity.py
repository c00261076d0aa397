"""``perplexity_report``: the model and an n-gram baseline scored on val and test."""

from typing import Any

import dagster as dg
import torch

import lmcore.data.loader
import lmcore.eval.perplexity
import lmcore.model.checkpoint
import lmcore.model.gpt
import lmcore.train.loop
from assets.data.tokenizer import TOKENIZER_FILE
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage
from lmcore.data.shards import open_split
from lmcore.data.tokenizer import load_tokenizer
from lmcore.eval.perplexity import perplexity_comparison
from lmcore.io import write_json
from lmcore.model.checkpoint import load_trained_model


class PerplexityConfig(dg.Config):
    ngram_order: int = 3
    """Order of the Kneser-Ney n-gram baseline fitted on the train split."""
    max_eval_tokens: int | None = None
    """Score at most this many tokens per split (None: all)."""
    batch_size: int = 8


def _previous_test_bpb(context: dg.AssetExecutionContext) -> dict[str, Any] | None:
    """The last report's model figures, to compare a retrained model with its predecessor."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return None
    meta = event.asset_materialization.metadata
    if "test_bits_per_byte_model" not in meta:
        return None
    return {"test_bits_per_byte_model": meta["test_bits_per_byte_model"].value, "run_id": event.run_id}


@dg.asset(
    group_name="pretrain",
    kinds={"pytorch"},
    pool="gpu",
    code_version=code_version(lmcore.eval.perplexity),
    automation_condition=dg.AutomationCondition.eager(),
)
def perplexity_report(
    context: dg.AssetExecutionContext,
    config: PerplexityConfig,
    pretrained_model: dict,
    token_shards: dict,
    tokenizer: dict,
    store: ArtifactStore,
) -> dg.Output:
    """Perplexity and bits per byte of the model and of an n-gram baseline on val and test.

    After a retrain the report also says how the new model compares with the previous one.
    """
    previous = _previous_test_bpb(context)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_trained_model(pretrained_model["path"], device)
    shard_root, _ = load_manifest(store, token_shards)
    tok_path, _ = load_manifest(store, tokenizer)
    splits = {s: open_split(shard_root, s).arrays for s in ("val", "test")}
    figures = perplexity_comparison(
        model, load_tokenizer(tok_path / TOKENIZER_FILE), splits, open_split(shard_root, "train").arrays,
        ngram_order=config.ngram_order, max_tokens=config.max_eval_tokens, batch_size=config.batch_size,
        device=device,
    )  # fmt: skip
    report = {"checkpoint": pretrained_model["path"], "ngram_order": config.ngram_order, "splits": figures,
              "previous": previous}  # fmt: skip
    ref = run_stage(
        store,
        "perplexity_report",
        lambda out: write_json(out / "manifest.json", report),
    )
    write_json(store.reports_dir() / "perplexity.json", report)
    rows = [
        dg.TableRecord({"split": s, "model": who, "perplexity": round(f["perplexity"], 3),
                        "bits_per_byte": round(f["bits_per_byte"], 4), "tokens": f["tokens"]})
        for s, by in figures.items() for who, f in by.items()
    ]  # fmt: skip
    test = figures["test"]
    return output(
        ref,
        {
            "report": dg.MetadataValue.table(
                rows,
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("split"),
                        dg.TableColumn("model"),
                        dg.TableColumn("perplexity", "float"),
                        dg.TableColumn("bits_per_byte", "float"),
                        dg.TableColumn("tokens", "int"),
                    ]  # fmt: skip
                ),
            ),
            "test_bits_per_byte_model": round(test["model"]["bits_per_byte"], 4),
            "test_bits_per_byte_ngram": round(test["ngram"]["bits_per_byte"], 4),
            "model_beats_ngram_on_test": test["model"]["bits_per_byte"] < test["ngram"]["bits_per_byte"],
            "previous_test_bits_per_byte_model": previous["test_bits_per_byte_model"] if previous else None,
            "change_vs_previous_bits_per_byte": (
                round(test["model"]["bits_per_byte"] - previous["test_bits_per_byte_model"], 4) if previous else None
            ),
        },
        config=config,
        inputs={"pretrained_model": pretrained_model, "token_shards": token_shards, "tokenizer": tokenizer},
    )
