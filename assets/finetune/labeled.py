"""``labeled_data``: {text, label} train/validation/test for the classifiers; bad lines counted and skipped."""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from assets.artifacts import LabeledData, Splits
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.data.splits import SPLITS
from lmcore.eval.baselines import load_labeled
from lmcore.finetune.tasks import DERIVED, classification_examples
from lmcore.io import write_json


class LabeledDataConfig(dg.Config):
    train: str = DERIVED
    """JSONL file of {text, label}, or derived:python-docs (which stdlib family a docstring is from)."""
    validation: str = ""
    test: str = ""
    text_field: str = "text"
    label_field: str = "label"


def _derived_examples(splits: Splits) -> dict[str, list[dict[str, str]]]:
    """Docstring -> module family examples, each in the split of the document it came from."""
    split_of, rows = {}, []
    for split in SPLITS:
        for row in splits.rows(split):
            split_of[row["doc_id"]] = split
            rows.append(row)
    examples, _ = classification_examples(rows)
    part = {"train": "train", "val": "validation", "test": "test"}
    out: dict[str, list[dict[str, str]]] = {p: [] for p in LabeledData.PARTS}
    for ex in examples:
        out[part[split_of[ex["doc_id"]]]].append({"text": ex["text"], "label": ex["label"]})
    return out


def _from_files(config: LabeledDataConfig) -> tuple[dict[str, list[dict[str, str]]], dict[str, Any]]:
    parts, stats = {}, {}
    for name in LabeledData.PARTS:
        path = getattr(config, name)
        if not path:
            raise ValueError(f"labeled_data.{name}: no file given; set it to a JSONL file of text and label")
        texts, labels, stats[name] = load_labeled(path, config.text_field, config.label_field)
        parts[name] = [{"text": t, "label": lab} for t, lab in zip(texts, labels, strict=True)]
    return parts, stats


@dg.asset(group_name="finetune", kinds={"json"}, code_version=code_version_of(__name__))
def labeled_data(
    context: dg.AssetExecutionContext, config: LabeledDataConfig, splits: Splits, store: ArtifactStore
) -> LabeledData:
    """Labeled texts for classification, as train/validation/test JSONL; bad lines counted and skipped."""

    def build(out: Path) -> None:
        if config.train == DERIVED:
            parts = _derived_examples(splits)
            stats = {name: {"rows": len(rows)} for name, rows in parts.items()}
        else:
            parts, stats = _from_files(config)
        for name, rows in parts.items():
            (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_json(out / "manifest.json", {"stats": stats, "files": [f"{n}.jsonl" for n in LabeledData.PARTS]})

    data = LabeledData.publish(store, "labeled_data", build)
    labels = {n: data.part(n)[1] for n in LabeledData.PARTS}
    classes = sorted(set(labels["train"]))
    metadata: dict[str, Any] = {f"{n}_rows": len(labels[n]) for n in LabeledData.PARTS}
    metadata |= {
        "classes": len(classes),
        "labels": ", ".join(classes),
        "stats": dg.MetadataValue.json(data.manifest["stats"]),
    }
    return result(context, data, metadata, config=config, inputs={"splits": splits})
