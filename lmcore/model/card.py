"""The model card (``README.md``) of an exported model, in the Hugging Face card format.

:func:`model_card` turns plain inputs into the card's text: YAML front matter (license, tags,
``base_model`` when the model was started from a hub model, and ``model-index`` results, which
``huggingface_hub.ModelCard`` and the Hub read), then Markdown: every figure of the evaluation next
to its baseline with the interval of the difference and the gate's rule, each evaluation set's
n-gram overlap with the training data (and the figures on its clean part), the data lineage
(corpus version, tokenizer digest, base model) and the training config.

The inputs are what the artifacts hold as published: the evaluation's ``evaluation.json``
(``lmcore.eval.report``; its ``table`` rows are ``lmcore.eval.table.MetricRow.to_dict``) and the
checkpoints' ``meta.json``. This module renders text only: it knows nothing of Dagster, of where
the inputs are stored, or of ``huggingface_hub``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

CARD_FILE = "README.md"
ROW_MODEL = {"pretrained": "model", "sft": "fine-tuned"}
"""Per exported model, the ``model`` of the evaluation rows that measure it (``lmcore.eval.table.metric_rows``:
perplexity and bits per byte rate the pretrained ``model``, ROUGE the ``fine-tuned`` one); those rows are its
``model-index`` results. The classifier rows rate classifiers built on the pretrained model: in the table only."""
_METRIC_TYPES = {"perplexity": "perplexity", "bits per byte": "bits_per_byte", "ROUGE": "rouge"}
_DATASETS = {
    "pretrained": {"type": "lmpipe/test_split", "name": "test split of the training corpus", "split": "test"},
    "sft": {"type": "lmpipe/sft_heldout", "name": "held-out SFT instructions", "split": "heldout"},
}
_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")
_TAG = re.compile(r"\S{1,64}")


@dataclass(kw_only=True, frozen=True)
class CardConfig:
    """What the model card says besides the figures: its license and tags."""

    license: str = "other"
    """The weights' license as a Hugging Face license id (``apache-2.0``, ``mit``, ``cc-by-4.0``, ...). ``other``
    (the default) says nothing more: set what your corpus and, when you started from one, the base model allow."""
    tags: tuple[str, ...] = ()
    """Tags added to the card's metadata after ``lmpipe``, ``text-generation`` and the architecture."""

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.license, str) and _LICENSE.fullmatch(self.license)):
            problems.append(f"license={self.license!r} is not a license id (lower case, e.g. apache-2.0, mit, other)")
        bad = [t for t in self.tags if not (isinstance(t, str) and _TAG.fullmatch(t))]
        if bad:
            problems.append(f"tags {bad} must be 1 to 64 characters without spaces")
        if problems:
            raise ValueError("model card: " + "; ".join(problems))


@dataclass(kw_only=True, frozen=True)
class Lineage:
    """Where an exported model's weights and data came from."""

    corpus_version: str | None
    """The data version of the token shards the model was pretrained on (the tokenized corpus)."""
    shards_manifest_sha256: str | None
    """The digest of those shards' manifest (every shard's digest)."""
    tokenizer_sha256: str | None
    """The digest of the exported ``tokenizer.json``."""
    base_model: Mapping[str, Any] | None
    """``{"source", "revision", "weights_sha256"}`` of the published model pretraining started from; None: new
    weights (trained from scratch)."""
    fine_tuned_from: str | None = None
    """SFT: the weights digest of the pretrained checkpoint it was fine-tuned from."""
    sft_examples_sha256: str | None = None
    """SFT: the digest of its training examples."""

    @classmethod
    def of(cls, pretrained_meta: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Lineage:
        """The lineage of the pretrained checkpoint (``meta`` None) or of one fine-tuned from it (``meta``),
        from their ``meta.json``."""
        data = pretrained_meta.get("data") or {}
        tuned = (meta or {}).get("data") or {}
        return cls(
            corpus_version=(pretrained_meta.get("data_versions") or {}).get("token_shards"),
            shards_manifest_sha256=data.get("manifest_sha256"),
            tokenizer_sha256=(meta or pretrained_meta).get("tokenizer_sha256"),
            base_model=pretrained_meta.get("base_model"),
            fine_tuned_from=tuned.get("init_sha256") if meta is not None else None,
            sft_examples_sha256=tuned.get("examples_sha256") if meta is not None else None,
        )

    def hub_id(self) -> str | None:
        """The base model's hub id; None when there is none or it was a local directory (no revision resolved)."""
        if not self.base_model or self.base_model.get("revision") is None:
            return None
        return str(self.base_model["source"]).removeprefix("hf:")


@dataclass(kw_only=True, frozen=True)
class CardInputs:
    """Everything one exported model's card says."""

    model: str
    """Which export: ``pretrained`` or ``sft``."""
    name: str
    """The model's name in the card's title and ``model-index``."""
    architecture: str
    """The transformers ``model_type`` (``gpt2``, ``llama``)."""
    evaluation: Mapping[str, Any]
    """The published evaluation (``evaluation.json``): its ``table`` and ``contamination``."""
    evaluation_version: str
    """The evaluation report's data version (the one that let this export through the gate)."""
    lineage: Lineage
    training_config: Mapping[str, Any]
    """The checkpoint's resolved config (``meta.json``'s ``config``)."""

    def __post_init__(self) -> None:
        if self.model not in ROW_MODEL:
            raise ValueError(f"model card: model={self.model!r}; valid: {', '.join(ROW_MODEL)}")
        if "table" not in self.evaluation or "contamination" not in self.evaluation:
            raise ValueError(
                "model card: the evaluation has no table or contamination; re-materialize evaluation_report"
            )


def model_card(inputs: CardInputs, config: CardConfig = CardConfig()) -> str:
    """The card's text: YAML front matter, then Markdown."""
    body = [
        f"# {inputs.name}",
        "",
        _summary(inputs),
        *_usage(inputs.model),
        *_table(inputs.evaluation["table"], ROW_MODEL[inputs.model], inputs.evaluation_version),
        *_contamination(inputs.evaluation["contamination"]),
        *_lineage(inputs.lineage),
        "",
        "## Training config",
        "",
        "```json",
        json.dumps(inputs.training_config, indent=2, sort_keys=True, default=str),
        "```",
    ]
    return "---\n" + yaml.safe_dump(metadata(inputs, config), sort_keys=False) + "---\n\n" + "\n".join(body) + "\n"


def metadata(inputs: CardInputs, config: CardConfig) -> dict[str, Any]:
    """The front matter: license, library, pipeline tag, tags, ``base_model`` (a hub id) and ``model-index``."""
    meta: dict[str, Any] = {
        "license": config.license,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": list(dict.fromkeys(["lmpipe", "text-generation", inputs.architecture, *config.tags])),
    }
    if hub_id := inputs.lineage.hub_id():
        meta["base_model"] = hub_id
    metrics = [_metric(r) for r in inputs.evaluation["table"] if r["model"] == ROW_MODEL[inputs.model]]
    if metrics:
        task = {"type": "text-generation", "name": "Text Generation"}
        meta["model-index"] = [
            {"name": inputs.name, "results": [{"task": task, "dataset": _DATASETS[inputs.model], "metrics": metrics}]}
        ]
    return meta


def _metric(row: Mapping[str, Any]) -> dict[str, Any]:
    kind = next((t for prefix, t in _METRIC_TYPES.items() if row["metric"].startswith(prefix)), row["metric"])
    return {"type": kind, "value": row["value"], "name": row["metric"]}


def _summary(inputs: CardInputs) -> str:
    base = inputs.lineage.base_model
    start = f"continued pretraining of `{base['source']}`" if base else "pretrained from scratch"
    what = (
        "A base language model" if inputs.model == "pretrained" else "A chat model (ChatML), fine-tuned on instructions"
    )
    return (
        f"{what}: `{inputs.architecture}` architecture, {start} with lmpipe. It was exported "
        f"because it passed the evaluation's blocking checks (evaluation `{inputs.evaluation_version[:12]}`)."
    )


def _usage(model: str) -> list[str]:
    lines = [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
    ]
    if model == "sft":
        lines += [
            'messages = [{"role": "user", "content": "Hello"}]',
            "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0, ids.shape[1]:], "
            "skip_special_tokens=True))",
        ]
    else:
        lines += [
            'ids = tokenizer("The", return_tensors="pt").input_ids',
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0]))",
        ]
    return [*lines, "```"]


def _table(rows: Sequence[Mapping[str, Any]], own: str, version: str) -> list[str]:
    lines = [
        "",
        "## Evaluation",
        "",
        f"Every figure of the pipeline's evaluation (`{version[:12]}`) next to its baseline on the same test items. "
        "Improvement: how much better the model is (> 0: better), with its interval and p-value (paired bootstrap). "
        f"Rows marked **this model** rate this export; the others rate models trained alongside it.",
        "",
        "| metric | model | value | baseline | baseline value | improvement [interval] p | items | gate |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | --- |",
    ]
    for r in rows:
        who = f"**this model** ({r['model']})" if r["model"] == own else r["model"]
        gate = "not gated" if r["rule"] is None else f"{r['rule']}: {'passes' if r['passes'] else 'fails'}"
        interval = f"{r['improvement']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] p={r['p_value']:.3g}"
        lines.append(
            f"| {r['metric']} | {who} | {r['value']:.4f} | {r['baseline']} | {r['baseline_value']:.4f} | "
            f"{interval} | {r['items']} | {gate} |"
        )
    return lines


def _contamination(c: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        "## Contamination",
        "",
        f"Each evaluation set checked for word {c['n']}-gram overlap with the training data (the blocking limit is "
        f"{c['threshold']} of a set's examples), and the figures again on its clean part.",
        "",
        "| set | checked against | examples | contaminated | fraction | clean part: model vs baseline |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, s in c["sets"].items():
        against = ", ".join(s.get("checked_against", []))
        clean = _clean(s.get("clean") or {})
        lines.append(f"| {name} | {against} | {s['examples']} | {s['contaminated']} | {s['fraction']:.4f} | {clean} |")
    return lines


def _clean(clean: Mapping[str, Any]) -> str:
    """The figures on a set's uncontaminated examples, model vs baseline."""
    parts = []
    for key, label, inner in (
        ("perplexity", "perplexity", None),
        ("bits_per_byte", "bits per byte", None),
        ("rouge", "ROUGE-L F", ("rougeL", "fmeasure")),
    ):
        pair = clean.get(key)
        if pair and pair.get("model") is not None and pair.get("baseline") is not None:
            model, base = (_dig(pair[side], inner) for side in ("model", "baseline"))
            parts.append(f"{label} {model:.4f} vs {base:.4f}")
    if clean.get("model") and clean.get("baseline"):
        parts.append(f"accuracy {clean['model']['accuracy']:.4f} vs {clean['baseline']['accuracy']:.4f}")
    return "; ".join(parts) or "-"


def _dig(value: Any, path: tuple[str, ...] | None) -> float:
    for key in path or ():
        value = value[key]
    return float(value)


def _lineage(lineage: Lineage) -> list[str]:
    base = lineage.base_model
    if base:
        revision = f"at revision {base['revision']}" if base.get("revision") else "(a local directory)"
        started = f"`{base['source']}` {revision}, weights sha256 `{base.get('weights_sha256')}`"
    else:
        started = "none: trained from scratch"
    same = lineage.shards_manifest_sha256 == lineage.corpus_version
    rows = [
        ("corpus (token shards version)", lineage.corpus_version),
        # the same digest when the token shards' data version is their manifest's (it is, as published)
        ("token shards manifest sha256", None if same else lineage.shards_manifest_sha256),
        ("tokenizer.json sha256", lineage.tokenizer_sha256),
        ("base model", started),
        ("fine-tuned from (pretrained weights sha256)", lineage.fine_tuned_from),
        ("SFT examples sha256", lineage.sft_examples_sha256),
    ]
    lines = ["", "## Data lineage", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {_code(v)} |" for k, v in rows if v is not None]
    return lines


def _code(value: str) -> str:
    return value if " " in value else f"`{value}`"
