"""Text classification with the LM, four ways, scored on the same test split.

* ``label_lm`` (:mod:`lmcore.finetune.label_lm`): the LM fine-tuned to answer a ChatML
  prompt with the label, predicted by each label's likelihood.
* ``head`` (:mod:`lmcore.finetune.head`): the LM with a linear head on the prompt's last
  non-pad token.
* ``encoder`` (:mod:`lmcore.finetune.encoder`): a masked-LM encoder of the LM's shape,
  pretrained from scratch on the token shards, then fine-tuned with the ``head`` code path,
  the head on the prompt's first position ([CLS]). Not in the default ``methods``: it needs
  the shards (``ClassifyRun.shard_root``) and a second pretraining run.
* ``bow``: the bag-of-words baseline of ``lmcore.eval.baselines`` (C tuned on validation).

Optionally, the two decoder methods (label_lm, head) start from a task-adapted LM
(``lmcore.finetune.adapt``): the pretrained LM trained further on the task's own train texts
with the plain next-token objective, labels unused ("task-adaptive pretraining", Gururangan
et al. 2020).

:class:`ClassifyConfig` holds every setting, one :class:`~lmcore.train.config.TrainConfig`
per trained method. Under torchrun every process trains each method (the loop's DDP), then
rank 0 alone scores them: scoring calls no collective, so no rank waits on another there.
This module knows nothing of Dagster; progress leaves through a callback.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcore.data.tokenizer import Tokenizer
from lmcore.eval.baselines import evaluate_classifier, tune_bow_baseline
from lmcore.finetune.adapt import adapt_lm
from lmcore.finetune.encoder import encoder_train_config, evaluate_encoder, pretrain_encoder, shard_vocab
from lmcore.finetune.head import load_classifier, predict_head, train_head
from lmcore.finetune.label_lm import evaluate_label_lm, train_label_lm
from lmcore.finetune.prompts import INSTRUCTION, Labeled
from lmcore.finetune.sft import FinetuneRun, init_model_config
from lmcore.model.checkpoint import load_trained_model
from lmcore.model.lora import LoraConfig
from lmcore.train.config import TrainConfig
from lmcore.train.distributed import dist_env
from lmcore.train.job import NO_OUTLETS, Callback, Outlets
from lmcore.train.summary import TrainSummary

METHODS = ("label_lm", "head", "encoder", "bow")
"""Every method, in the order they run and are reported."""
DEFAULT_METHODS = ("label_lm", "head", "bow")
"""The methods a config runs unless it names others (``encoder`` is asked for by name)."""
ADAPTED = ("label_lm", "head")
"""The methods that start from the task-adapted LM when ``adapt`` is set."""
Events = Callable[[dict[str, Any]], None]


@dataclass(kw_only=True, frozen=True)
class ClassifyConfig:
    """Which classifiers to train and score, and each one's training run."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    """Any of label_lm, head, encoder and bow; they are always run (and reported) in that order."""
    label_lm: TrainConfig = field(default_factory=TrainConfig)
    """The label_lm run: rows of packed label examples (context_length tokens each) per batch."""
    head: TrainConfig = field(default_factory=TrainConfig)
    """The head run: one example per row, so it usually wants more steps than label_lm."""
    encoder_pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(objective="masked"))
    """The encoder method's masked-LM pretraining run on the token shards ("train" windows, "val" to
    validate): a fresh encoder of the pretrained LM's shape (its ModelConfig, bidirectional, one more
    token id for <|mask|>). objective is always "masked" (left out or "causal" means that; others raise)."""
    encoder: TrainConfig = field(default_factory=TrainConfig)
    """The encoder method's head run from the pretrained encoder: one example per row, like head."""
    encoder_eval_windows: int = 256
    """Test-split windows (of the model's context) the encoder's masked-token accuracy is measured on."""
    encoder_pll_rows: int = 4
    """Test-split windows the encoder's pseudo-perplexity is measured on: context_length forwards each; 0: none."""
    adapt: TrainConfig | None = None
    """Task-adaptive pretraining on the train texts (packed rows) before label_lm and head; None: none."""
    lora: LoraConfig | None = None
    """LoRA adapters for the fine-tuning runs (label_lm, head, encoder's head run; the LM or encoder frozen);
    None: fine-tune every weight."""
    instruction: str = INSTRUCTION
    """First line of the user message; the text follows on the next line."""
    bow_seed: int = 0
    """Seed of the bag-of-words baseline's fits."""
    score_batch_size: int = 64
    """Sequences per forward pass when scoring the test split."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))  # lists from YAML/Dagster config
        if bad := sorted(set(self.methods) - set(METHODS)):
            raise ValueError(f"methods {bad} are unknown; choose from {METHODS}")
        if not self.methods:
            raise ValueError(f"methods is empty; choose some of {METHODS}")
        if self.score_batch_size < 1:
            raise ValueError(f"score_batch_size must be >= 1, got {self.score_batch_size}")
        if self.encoder_eval_windows < 1 or self.encoder_pll_rows < 0:
            raise ValueError(
                f"encoder_eval_windows must be >= 1 and encoder_pll_rows >= 0, got {self.encoder_eval_windows}, "
                f"{self.encoder_pll_rows}"
            )
        object.__setattr__(self, "encoder_pretrain", encoder_train_config(self.encoder_pretrain))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifyConfig:
        """The config of :meth:`to_dict` (e.g. read back from JSON); ValueError naming unknown fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown ClassifyConfig fields {unknown}; valid fields are {sorted(known)}")
        runs = ("label_lm", "head", "encoder_pretrain", "encoder", "adapt")
        nested = {name: TrainConfig.from_dict(d[name]) for name in runs if d.get(name) is not None}
        if d.get("lora") is not None:
            nested["lora"] = LoraConfig.from_dict(d["lora"])
        return cls(**{**d, **nested})


@dataclass(frozen=True, kw_only=True)
class ClassifyRun:
    """The classifiers of :func:`evaluate_all` trained from one pretrained checkpoint.

    ``lmcore.finetune.specs.ClassifySpec`` is one, with the paths of its labeled data and tokenizer added.
    """

    init_checkpoint: Path
    """The pretrained LM every method starts from (the encoder takes its shape from it)."""
    config: ClassifyConfig
    runs_dir: Path
    """Each LM run lives in ``runs_dir/<method>/<run key>`` (the encoder's pretraining in
    ``runs_dir/encoder_pretrain``), so changing one method's config retrains that method only."""
    outlets: Outlets = NO_OUTLETS
    """Where every LM run's records and checkpoints go besides its run directory."""
    shard_root: Path | None = None
    """The token shards the LM was pretrained on (the ``encoder`` method pretrains on them); None without it."""

    def __post_init__(self) -> None:
        if "encoder" in self.config.methods and self.shard_root is None:
            raise ValueError(
                "method 'encoder' pretrains a masked-LM encoder on the token shards: pass shard_root (the "
                "token_shards directory; in a classify spec the key shard_root), or drop 'encoder' from methods"
            )


@dataclass(frozen=True)
class _Task:
    """What every method of one ``evaluate_all`` call shares."""

    run: ClassifyRun
    tokenizer: Tokenizer
    train: Labeled
    validation: Labeled
    test: Labeled
    labels: list[str]
    callback: Events | None

    def finetune_run(
        self, method: str, init_checkpoint: Path, train: TrainConfig, *, adapters: bool = True
    ) -> FinetuneRun:
        """``method``'s training run from ``init_checkpoint`` in ``runs_dir/<method>``; with the config's LoRA
        adapters unless ``adapters`` is False (every weight)."""
        run = self.run
        return FinetuneRun(
            init_checkpoint=init_checkpoint,
            train=train,
            runs_dir=run.runs_dir / method,
            lora=run.config.lora if adapters else None,
            outlets=run.outlets,
        )

    def on_train(self, method: str) -> Callback | None:
        cb = self.callback
        return None if cb is None else lambda record: cb({"method": method, "stage": "train", **record})

    def on_progress(self, method: str) -> Callable[[str, int, int], None] | None:
        cb = self.callback
        return (
            None
            if cb is None
            else lambda what, done, n: cb({"method": method, "stage": what, "done": done, "total": n})
        )


def evaluate_all(
    run: ClassifyRun,
    tokenizer: Tokenizer,
    train: Labeled,
    validation: Labeled,
    test: Labeled,
    *,
    callback: Events | None = None,
) -> dict[str, Any] | None:
    """Train each method on ``train`` and score it on the same ``test``; returns ``{"labels", method: metrics}``.

    Metrics per method: accuracy, macro_f1, confusion (rows true, columns predicted, in
    ``labels`` order), labels, ``predictions`` (one label per test text, in order, to score any
    subset again with ``lmcore.eval.baselines.evaluate_classifier``), seconds, and ``train``
    (the training summary, trimmed; for bow the chosen C). label_lm adds generation_exact_match
    and generation_valid. encoder adds masked_accuracy and pseudo_perplexity (of the pretrained
    encoder on the shards' "test" split, :func:`~lmcore.finetune.encoder.evaluate_encoder`),
    encoder_val_loss (its pretraining run's), and ``train["pretrain"]`` (that run, trimmed).
    Each LM run lives in ``run.runs_dir/<method>/<run key>`` (``lmcore.train.runs``), so a run on
    other data gets its own directory. With ``run.config.adapt``, label_lm and head start from
    :func:`adapt_lm`, whose summary is returned under ``"adaptation"``. ``callback`` gets ``{"method",
    "stage": "train", ...loop record}`` (method ``adapt`` and ``encoder_pretrain`` too) and ``{"method",
    "stage": "score" | "generate", "done", "total"}``. Every LM run also sends its records and
    checkpoints to ``run.outlets``.
    Under torchrun every rank trains the LM methods, one after the other, then rank 0 scores every
    method and returns the results; the other ranks return None. ``seconds`` is training plus scoring.
    """
    task = _Task(run, tokenizer, train, validation, test, sorted(set(train[1])), callback)
    results: dict[str, Any] = {"labels": task.labels}
    methods = [m for m in METHODS if m in run.config.methods]
    pretrained = adapted = Path(run.init_checkpoint)  # the encoder takes its shape from the pretrained LM
    if run.config.adapt is not None and set(ADAPTED) & set(methods):
        adapted, results["adaptation"] = _adapt(task)
    trained: dict[str, tuple[Any, float]] = {}
    for method in (m for m in methods if m in TRAIN):  # every rank: training is collective
        start = time.perf_counter()
        init = adapted if method in ADAPTED else pretrained
        trained[method] = TRAIN[method](task, init), time.perf_counter() - start
    if not dist_env().is_main:
        return None
    for method in methods:
        start = time.perf_counter()
        summary, train_seconds = trained.get(method, (None, 0.0))
        metrics, brief = SCORE[method](task, summary)
        results[method] = {**metrics, "seconds": train_seconds + time.perf_counter() - start, "train": brief}
    return results


def _adapt(task: _Task) -> tuple[Path, dict[str, Any]]:
    """Task-adaptive pretraining (every weight) on the train texts: the adapted checkpoint and the run's figures."""
    start = time.perf_counter()
    run = task.finetune_run("adapt", task.run.init_checkpoint, task.run.config.adapt, adapters=False)
    summary = adapt_lm(run, task.train[0], task.validation[0], task.tokenizer, callback=task.on_train("adapt"))
    return summary.checkpoint, {**_brief(summary), "seconds": time.perf_counter() - start}


def _bow(task: _Task, _: None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit (C tuned on validation) and score the bag-of-words baseline: no torch, so no collective."""
    model, chosen = tune_bow_baseline(
        (list(task.train[0]), list(task.train[1])),
        (list(task.validation[0]), list(task.validation[1])),
        seed=task.run.config.bow_seed,
    )
    predicted = [str(p) for p in model.predict(list(task.test[0]))]
    return {**evaluate_classifier(task.test[1], predicted, task.labels), "predictions": predicted}, chosen


def _train_label_lm(task: _Task, init_checkpoint: Path) -> TrainSummary:
    run = task.finetune_run("label_lm", init_checkpoint, task.run.config.label_lm)
    instruction, callback = task.run.config.instruction, task.on_train("label_lm")
    return train_label_lm(run, task.train, task.validation, task.tokenizer, instruction=instruction, callback=callback)


def _score_label_lm(task: _Task, summary: TrainSummary) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = task.run.config
    lm, _ = load_trained_model(summary.checkpoint)
    metrics = evaluate_label_lm(
        lm,
        task.tokenizer,
        task.test,
        task.labels,
        instruction=cfg.instruction,
        batch_size=cfg.score_batch_size,
        progress=task.on_progress("label_lm"),
    )
    return metrics, _brief(summary)


def _train_head(task: _Task, init_checkpoint: Path, method: str = "head") -> TrainSummary:
    """The head run of ``method`` (head, or encoder from the pretrained encoder) from ``init_checkpoint``."""
    cfg = task.run.config
    run = task.finetune_run(method, init_checkpoint, cfg.head if method == "head" else cfg.encoder)
    data = (task.train, task.validation, task.tokenizer, task.labels)
    return train_head(run, *data, instruction=cfg.instruction, callback=task.on_train(method))


def _score_head(task: _Task, summary: TrainSummary) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = task.run.config
    classifier, _ = load_classifier(summary.checkpoint)
    predicted = predict_head(
        classifier,
        task.tokenizer,
        task.test[0],
        task.labels,
        instruction=cfg.instruction,
        batch_size=cfg.score_batch_size,
    )
    metrics = {**evaluate_classifier(task.test[1], predicted, task.labels), "predictions": list(predicted)}
    return metrics, _brief(summary)


def _train_encoder(task: _Task, init_checkpoint: Path) -> tuple[TrainSummary, TrainSummary]:
    """Pretrain the encoder (shaped like the LM at ``init_checkpoint``) on the shards, then its head run; the
    summaries of the head run and of the pretraining."""
    run, root = task.run, task.run.shard_root
    assert root is not None  # ClassifyRun checked
    if (base := shard_vocab(root)) < task.tokenizer.vocab_size:
        raise ValueError(
            f"{root}: the shards' vocabulary ({base}) is smaller than the tokenizer's ({task.tokenizer.vocab_size}); "
            "pass the token shards written with this tokenizer"
        )
    lm_config, _ = init_model_config(init_checkpoint)
    pretrain = pretrain_encoder(
        lm_config,
        run.config.encoder_pretrain,
        root,
        run.runs_dir / "encoder_pretrain",
        callback=task.on_train("encoder_pretrain"),
        outlets=run.outlets,
    )
    return _train_head(task, pretrain.checkpoint, "encoder"), pretrain


def _score_encoder(task: _Task, runs: tuple[TrainSummary, TrainSummary]) -> tuple[dict[str, Any], dict[str, Any]]:
    (head, pretrain), cfg = runs, task.run.config
    encoder, _ = load_trained_model(pretrain.checkpoint)
    assert task.run.shard_root is not None
    measured = evaluate_encoder(
        encoder,
        (task.run.shard_root, "test"),
        pretrain.mask_id,
        mask_rate=cfg.encoder_pretrain.mask_rate,
        max_windows=cfg.encoder_eval_windows,
        pll_rows=cfg.encoder_pll_rows,
        batch_size=cfg.score_batch_size,
    )
    metrics, brief = _score_head(task, head)
    encoder_metrics = {
        "masked_accuracy": measured["masked_accuracy"],
        "pseudo_perplexity": measured["pseudo_perplexity"],
        "encoder_val_loss": pretrain.val_loss,
        "encoder_eval": measured,
    }
    return {**metrics, **encoder_metrics}, {**brief, "pretrain": {**_brief(pretrain), "mask_id": pretrain.mask_id}}


TRAIN: dict[str, Callable[[_Task, Path], Any]] = {
    "label_lm": _train_label_lm,
    "head": _train_head,
    "encoder": _train_encoder,
}
"""The LM methods' training runs (a training summary each; the encoder's head and pretraining runs); every rank."""
SCORE: dict[str, Callable[[_Task, Any], tuple[dict[str, Any], dict[str, Any]]]] = {
    "label_lm": _score_label_lm,
    "head": _score_head,
    "encoder": _score_encoder,
    "bow": _bow,
}
"""Each method's scoring on the test split from its training summary (bow: None): ``(metrics, brief)``; rank 0."""


def steps(config: ClassifyConfig) -> dict[str, int]:
    """Optimizer steps of each training run the config asks for (for progress bars)."""
    runs = {
        "label_lm": config.label_lm,
        "head": config.head,
        "encoder_pretrain": config.encoder_pretrain,
        "encoder": config.encoder,
        "adapt": config.adapt,
    }
    return {name: run.max_steps for name, run in runs.items() if run is not None}


def _brief(summary: TrainSummary) -> dict[str, Any]:
    """The figures of a training run that a report keeps (JSON-able)."""
    d = summary.to_dict()
    return {k: d.get(k) for k in _BRIEF}


_BRIEF = (
    "step",
    "train_loss",
    "val_loss",
    "tokens_seen",
    "tokens_per_s",
    "params",
    "trainable_params",
    "checkpoint",
    "world_size",
)
