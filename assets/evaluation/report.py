"""``evaluation_report``: every number next to its baseline.

One table: perplexity and bits per byte (model vs n-gram), ROUGE (fine-tuned vs base model
on held-out instructions) and accuracy (best LM classifier vs bag of words), with sample
generations; also ``$LMPIPE_HOME/reports/evaluation.{json,md}``.

The answers are decoded with ``evaluation_report.generation`` (an
:class:`lmcore.model.generate.GenerationConfig`: by default deterministic, with a repetition
penalty and no 3-gram said twice, so a small model does not loop); the rows ``... (greedy)``
score plain greedy decoding of the same prompts, for comparison. Next to each: distinct-2 and
the share of answers with a line said three times or more.

Every evaluation set is checked for word 13-gram overlap with the training data that produced
the model (``lmcore.eval.contamination``): the test split against the train token shards, the
held-out SFT instructions against the SFT training rows and the train shards, the labeled test
texts against the labeled train texts and the train shards. ``contamination`` in the report
gives, per set, the contaminated fraction, the first contaminated examples and every metric
again on the clean subset; the blocking check ``evaluation_uncontaminated`` fails when a set's
fraction exceeds ``evaluation_report.contamination.threshold``.

The report itself is ``lmcore.eval.report.build_report``: this module reads the upstream artifacts,
has the models answer (``answers``), and publishes the report with its metadata.
"""

import dataclasses
from typing import Any

import dagster as dg
import pydantic

from assets.artifacts import Artifact, Checkpoint, LabeledData, Report, SftData, TokenizerFile, TokenShards
from assets.config import config_from
from assets.evaluation.answers import score_answers
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import result, upstream_ins
from assets.versions import code_version_of
from lmcore.eval.contamination import ContaminationConfig, chatml_text, conversation_text, shard_texts
from lmcore.eval.report import EvaluationReport, EvaluationSets, ReportSettings, build_report
from lmcore.eval.significance import SignificanceConfig
from lmcore.eval.table import METRICS, ClassifierResults, ReportInputs, rules
from lmcore.finetune.classify import METHODS
from lmcore.model.generate import GenerationConfig

_COLUMNS = [
    dg.TableColumn("metric"),
    dg.TableColumn("model"),
    dg.TableColumn("value", "float"),
    dg.TableColumn("baseline"),
    dg.TableColumn("baseline_value", "float"),
    dg.TableColumn("improvement", "float"),
    dg.TableColumn("low", "float"),
    dg.TableColumn("high", "float"),
    dg.TableColumn("p_value", "float"),
    dg.TableColumn("rule"),
    dg.TableColumn("passes", "bool"),
]


ContaminationSettings = config_from(ContaminationConfig)
GenerationSettings = config_from(GenerationConfig)
SignificanceSettings = config_from(SignificanceConfig)


class EvaluationConfig(dg.Config):
    rouge_examples: int = 48
    """Held-out instructions to generate answers for (base and fine-tuned model)."""
    max_new_tokens: int = 96
    """Longest answer, in tokens, for both decodings."""
    generation: GenerationSettings = GenerationSettings()
    """How the answers are decoded (lmcore.model.generate.GenerationConfig; when sampling, answer i uses seed + i):
    the ROUGE-1/L F rows, the samples. The rows "(greedy)" decode the same prompts greedily, for comparison."""
    contamination: ContaminationSettings = ContaminationSettings()
    """The 13-gram overlap check of every evaluation set; ``threshold`` is the blocking check's limit."""
    must_beat: list[str] | None = None
    """Table metrics on which the model must beat its baseline, with the whole interval of the improvement above 0,
    else the blocking gate check fails and the model is not exported (assets/evaluation/gate.py). None: every
    metric in the table that must_not_lose does not name; []: none."""
    must_not_lose: list[str] = []
    """Table metrics on which the model may trail its baseline, but not significantly: the gate fails only when the
    whole interval of the improvement is below 0."""
    significance: SignificanceSettings = SignificanceSettings()
    """How each row's interval and p-value are computed (paired bootstrap over the test items: confidence,
    resamples, seed; lmcore.eval.significance.SignificanceConfig)."""
    regression_tolerance: float = 0.02
    """How much worse than the previous evaluation a metric may get, as a fraction of the previous figure,
    before the (non-blocking) regression check warns."""

    @pydantic.field_validator("must_beat", "must_not_lose")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        unknown = [n for n in names or [] if n not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric {', '.join(map(repr, unknown))}; valid: {', '.join(METRICS)}")
        return names

    @pydantic.model_validator(mode="after")
    def _one_rule_per_metric(self) -> "EvaluationConfig":
        both = sorted(set(self.must_beat or []) & set(self.must_not_lose))
        if both:
            raise ValueError(
                f"{', '.join(map(repr, both))} in both must_beat and must_not_lose; give each metric one rule"
            )
        return self

    def rules(self) -> dict[str, str | None]:
        """The gate's rule for each metric of the table (None: reported, not gated)."""
        return rules(self.must_beat, self.must_not_lose)

    @pydantic.field_validator("generation", "contamination", "significance")
    @classmethod
    def _valid_lmcore(cls, settings: Any) -> Any:
        settings.to_lmcore()  # the dataclass's __post_init__ names the bad field and what would be valid
        return settings

    @pydantic.field_validator("regression_tolerance")
    @classmethod
    def _non_negative(cls, tolerance: float) -> float:
        if tolerance < 0:
            raise ValueError(f"must be >= 0 (a fraction of the previous figure, e.g. 0.02), got {tolerance}")
        return tolerance

    def settings(self) -> ReportSettings:
        """How ``lmcore.eval.report`` judges and renders the figures."""
        return ReportSettings(
            significance=self.significance.to_lmcore(),
            contamination=self.contamination.to_lmcore(),
            must_beat=self.must_beat,
            must_not_lose=self.must_not_lose,
            max_new_tokens=self.max_new_tokens,
        )


@dataclasses.dataclass(frozen=True)
class _Upstream:
    """evaluation_report's upstream artifacts, as the IO manager loads them."""

    perplexity_report: Report
    classifier_report: Report
    pretrained_model: Checkpoint
    sft_model: Checkpoint
    sft_dataset: SftData
    tokenizer: TokenizerFile
    token_shards: TokenShards
    labeled_data: LabeledData


@dg.asset(
    group_name="evaluation",
    kinds={"json"},
    code_version=code_version_of(__name__),
    ins=upstream_ins(_Upstream),
)
def evaluation_report(
    context: dg.AssetExecutionContext, config: EvaluationConfig, store: ArtifactStore, **upstream: Artifact
) -> Report:
    """One table: perplexity and bits per byte, ROUGE, accuracy, each next to the baseline it must beat;
    and each evaluation set's overlap with the training data, with the figures on its clean part."""
    up = _Upstream(**upstream)
    if up.perplexity_report.manifest.get("token_shards") != up.token_shards.data_version:
        raise ValueError(
            f"perplexity_report {up.perplexity_report.location} was not computed on token_shards "
            f"{up.token_shards.data_version}; re-materialize perplexity_report"
        )
    sft_train, heldout, _ = up.sft_dataset.read()
    models = {"base": up.pretrained_model.load(), "fine_tuned": up.sft_model.load()}
    tok, progress = up.tokenizer.tokenizer, reporter(context, "evaluation_report")
    generation = config.generation.to_lmcore()
    answers = score_answers(models, tok, heldout[: config.rouge_examples], generation, config.max_new_tokens, progress)
    (labeled_train, _), (labeled_test, test_labels) = up.labeled_data.part("train"), up.labeled_data.part("test")
    inputs = ReportInputs(
        perplexity=up.perplexity_report.manifest["splits"]["test"],
        answers=answers,
        references=[ex.reference for ex in heldout],
        classifiers=ClassifierResults.from_report(up.classifier_report.manifest, METHODS),
        truth=test_labels,
    )
    shards, eot = up.token_shards, up.token_shards.manifest["eot_id"]
    sets = EvaluationSets(  # each evaluation set, and what the model was trained on (the training side is read once)
        test_docs=list(shard_texts(tok, shards.split("test").arrays, eot)),
        heldout=[conversation_text(ex.prompt_messages, ex.reference) for ex in heldout],
        labeled_test=labeled_test,
        pretraining_train=shard_texts(tok, shards.split("train").arrays, eot),
        sft_train=(chatml_text(tok, ex.ids) for ex in sft_train),
        labeled_train=labeled_train,
    )
    report = build_report(inputs, sets, config.settings())
    published = Report.write(store, "evaluation_report", report.to_json(), name="evaluation", markdown=report.markdown)
    read = ("perplexity_report", "classifier_report", "sft_model", "token_shards", "labeled_data")
    return result(context, published, _metadata(report), config=config, inputs={n: upstream[n] for n in read})


def _metadata(report: EvaluationReport) -> dict[str, Any]:
    """The table, the Markdown, each figure with its interval, the decoding and each set's contamination."""
    rows = report.rows
    return {
        "report": dg.MetadataValue.table(
            [dg.TableRecord(r.to_dict()) for r in rows], schema=dg.TableSchema(columns=_COLUMNS)
        ),
        "markdown": dg.MetadataValue.md(report.markdown),
        **{r.metric: r.value for r in rows},
        **{f"{r.metric} improvement": dg.MetadataValue.text(r.interval_text()) for r in rows},
        "generation": dg.MetadataValue.json(report.generation()),
        **{f"contaminated_fraction ({n})": round(f, 4) for n, f in report.contaminated_fractions().items()},
        "contamination": dg.MetadataValue.json(report.figures["contamination"]),
    }


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    description="No evaluation set shares n-grams with the training data in more than "
    "evaluation_report.contamination.threshold of its examples.",
)
def evaluation_uncontaminated(evaluation_report: Report) -> dg.AssetCheckResult:
    c = evaluation_report.manifest["contamination"]
    over = {name: s["fraction"] for name, s in c["sets"].items() if s["fraction"] > c["threshold"]}
    text = "; ".join(
        f"{name}: {fraction:.4f} of its examples > threshold {c['threshold']}" for name, fraction in over.items()
    )
    return dg.AssetCheckResult(
        passed=not over,
        description=(
            f"contaminated above evaluation_report.contamination.threshold: {text}; remove the overlapping "
            "examples or raise the threshold"
        )
        if over
        else None,
        metadata={
            "threshold": c["threshold"],
            "over_threshold": dg.MetadataValue.json(over),
            **{f"{name}_fraction": round(s["fraction"], 4) for name, s in c["sets"].items()},
        },
    )
