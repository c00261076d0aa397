"""The promotion gate: model-quality checks on ``evaluation_report``, run right after it.

- ``evaluation_beats_baselines`` (blocking, ERROR): every row of the report meets its rule, judged on
  the interval of the model's improvement over its baseline (``lmcore.eval.table``):
  ``must_beat`` (``evaluation_report.must_beat``; None: every metric not in ``must_not_lose``) needs
  the whole interval above 0, ``must_not_lose`` only that it is not all below 0. When it fails,
  Dagster does not run what is downstream of the report, so ``hf_export`` is not materialized.
- ``evaluation_no_regression`` (WARN, non-blocking): no metric is worse than in the previously
  published evaluation (the materialization before this one, in the Dagster instance) by more
  than ``evaluation_report.regression_tolerance`` of the previous figure; both figures side by side.

The settings are those the checked report was made with, read from its materialization's
reproducibility manifest, so a profile sets them like any other field of the asset.
"""

import dagster as dg

from assets.artifacts import Report
from assets.evaluation.report import EvaluationConfig, evaluation_report
from lmcore.eval.table import METRICS, changes_since, gate_failures, rows_of

_DATA_VERSION_TAG = "dagster/data_version"
_CHANGE_COLUMNS = [
    dg.TableColumn("metric"),
    dg.TableColumn("previous", "float"),
    dg.TableColumn("new", "float"),
    dg.TableColumn("worse_by", "float"),
    dg.TableColumn("regressed", "bool"),
]


def _published(
    context: dg.AssetCheckExecutionContext, report: Report
) -> tuple[EvaluationConfig, dg.EventLogRecord | None]:
    """The config ``report`` was made with, and the record of the evaluation published before it (None: first)."""
    records = context.instance.fetch_materializations(evaluation_report.key, limit=2).records
    latest = records[0].asset_materialization if records else None
    if latest is None or (latest.tags or {}).get(_DATA_VERSION_TAG) != report.data_version:
        raise ValueError(
            f"evaluation_report {report.location} is not the latest materialization in this Dagster instance; "
            "re-materialize evaluation_report with this instance and artifact store"
        )
    config = EvaluationConfig(**latest.metadata["reproducibility"].value["config"])
    return config, records[1] if len(records) > 1 else None


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    description="Every gated row meets its rule: must_beat (the whole interval of the improvement above 0; by default "
    "every metric) or must_not_lose (not all of it below 0); evaluation_report.must_beat and must_not_lose.",
)
def evaluation_beats_baselines(
    context: dg.AssetCheckExecutionContext, evaluation_report: Report
) -> dg.AssetCheckResult:
    config, _ = _published(context, evaluation_report)
    rows = rows_of(evaluation_report.manifest)
    failed = gate_failures(rows, config.must_beat, config.must_not_lose)
    description = (
        "; ".join(failed) + ". Improve the model, give the test set more items (a narrower interval), or change "
        "the rule of these metrics in evaluation_report.must_beat / must_not_lose"
        if failed
        else None
    )
    return dg.AssetCheckResult(
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "rules": dg.MetadataValue.json({r.metric: r.rule for r in rows}),
            "failed": dg.MetadataValue.json(failed),
            **{f"{r.metric} improvement": dg.MetadataValue.text(r.interval_text()) for r in rows if r.rule},
        },
    )


@dg.asset_check(
    asset=evaluation_report,
    blocking=False,
    description="No metric is worse than in the previous evaluation by more than "
    "evaluation_report.regression_tolerance (of the previous figure).",
)
def evaluation_no_regression(context: dg.AssetCheckExecutionContext, evaluation_report: Report) -> dg.AssetCheckResult:
    config, before = _published(context, evaluation_report)
    if before is None:
        return dg.AssetCheckResult(passed=True, description="first evaluation: nothing to compare with")
    meta = before.asset_materialization.metadata
    previous = {k: v.value for k, v in meta.items() if k in METRICS and isinstance(v.value, (int, float))}
    changes = changes_since(rows_of(evaluation_report.manifest), previous, config.regression_tolerance)
    regressed = [c.metric for c in changes if c.regressed]
    return dg.AssetCheckResult(
        passed=not regressed,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"worse than the previous evaluation on {', '.join(regressed)}" if regressed else None,
        metadata={
            "changes": dg.MetadataValue.table(
                [dg.TableRecord(c.to_dict()) for c in changes], schema=dg.TableSchema(columns=_CHANGE_COLUMNS)
            ),
            "regression_tolerance": config.regression_tolerance,
            "previous_run_id": before.run_id,
            "previous_data_version": (before.asset_materialization.tags or {}).get(_DATA_VERSION_TAG),
            **{f"{c.metric} (previous)": c.previous for c in changes},
            **{c.metric: c.new for c in changes},
        },
    )
