"""``labeled_data``: {text, label} train/validation/test for the classifiers; bad lines counted and skipped."""

import json
from pathlib import Path

import dagster as dg

import lmcore.eval.baselines
import lmcore.eval.rouge
import lmcore.finetune.adapt
import lmcore.finetune.classify
from assets.resources import ArtifactStore
from assets.stage import code_version, load_manifest, output, run_stage
from lmcore.data.splits import SPLITS, split_paths
from lmcore.eval.baselines import load_labeled
from lmcore.finetune.tasks import classification_examples
from lmcore.io import read_parquet_rows, write_json

DERIVED = "derived:python-docs"
_PARTS = ("train", "validation", "test")


class LabeledDataConfig(dg.Config):
    train: str = DERIVED
    """JSONL file of {text, label}, or derived:python-docs (which stdlib family a docstring is from)."""
    validation: str = ""
    test: str = ""
    text_field: str = "text"
    label_field: str = "label"


def _derived_examples(store: ArtifactStore, splits: dict) -> dict[str, list[dict[str, str]]]:
    """Docstring -> module family examples, each in the split of the document it came from."""
    root, manifest = load_manifest(store, splits)
    split_of, rows = {}, []
    for split in SPLITS:
        for row in read_parquet_rows(split_paths(root, split, manifest)):
            split_of[row["doc_id"]] = split
            rows.append(row)
    examples, _ = classification_examples(rows)
    part = {"train": "train", "val": "validation", "test": "test"}
    out: dict[str, list[dict[str, str]]] = {p: [] for p in _PARTS}
    for ex in examples:
        out[part[split_of[ex["doc_id"]]]].append({"text": ex["text"], "label": ex["label"]})
    return out


@dg.asset(
    group_name="finetune", kinds={"json"}, code_version=code_version(lmcore.eval.baselines, lmcore.finetune.classify)
)
def labeled_data(config: LabeledDataConfig, splits: dict, store: ArtifactStore) -> dg.Output:
    """Labeled texts for classification, as train/validation/test JSONL; bad lines counted and skipped."""

    def build(out: Path) -> None:
        if config.train == DERIVED:
            parts = _derived_examples(store, splits)
            for name in _PARTS:
                (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in parts[name]))
            stats = {name: {"rows": len(parts[name])} for name in _PARTS}
        else:
            stats = {}
            for name in _PARTS:
                path = getattr(config, name)
                if not path:
                    raise ValueError(f"labeled_data.{name}: no file given; set it to a JSONL file of text and label")
                texts, labels, stats[name] = load_labeled(path, config.text_field, config.label_field)
                rows = [{"text": t, "label": lab} for t, lab in zip(texts, labels, strict=True)]
                (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_json(out / "manifest.json", {"stats": stats, "files": [f"{n}.jsonl" for n in _PARTS]})

    ref = run_stage(store, "labeled_data", build)
    path, manifest = load_manifest(store, ref)
    counts = {n: _read(path, n)[1] for n in _PARTS}
    classes = sorted(set(counts["train"]))
    metadata = {f"{n}_rows": len(counts[n]) for n in _PARTS}
    metadata |= {
        "classes": len(classes),
        "labels": ", ".join(classes),
        "stats": dg.MetadataValue.json(manifest["stats"]),
    }
    return output(ref, metadata, config=config, inputs={"splits": splits})


def _read(path: Path, name: str) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (path / f"{name}.jsonl").read_text().splitlines() if line]
    return [r["text"] for r in rows], [r["label"] for r in rows]
