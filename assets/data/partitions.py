"""The data stages' partitions: hash buckets of the corpus (``lmcore.data.partitions``), run in worker processes.

Why hash buckets of units, not dynamic partitions per file: the number of partitions
stays fixed (16) however many files a corpus has, so the UI, the run's step count and each
stage's number of small files stay bounded, and no sensor has to register partitions before
a run; a unit never changes bucket, so a new file still touches only its own units' partitions. A unit is a
file, or a part of about ``raw_corpus.unit_bytes`` of a large local JSON Lines or Parquet file, so one
large file is spread over several partitions, hence workers.

A run over several partitions (``dagster/asset_partition_range_start/end``: the whole range by
default, see ``pipelines.runner``) executes each stage's partitions in parallel worker
processes on this machine (``$LMPIPE_DATA_WORKERS``, default every core). A partition whose
inputs (code version, config, upstream data versions) are those of its stored version is not
built again: its handle carries the digest of its inputs (``memo``). On a cluster, a backfill
with one run per partition (or per few) puts the partitions on different machines through
Dagster's run launcher (Kubernetes) or executor (Celery); the definitions stay the same.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import dagster as dg

from assets.artifacts import Artifact, open_ref
from assets.io_manager import partition_ref
from assets.progress import reporter
from assets.resources import ArtifactStore
from assets.stage import reproducibility
from lmcore.data.partitions import PARTITIONS
from lmcore.io import digest_of
from lmcore.workers import call, default_workers, run_parallel

DATA_PARTITIONS = dg.StaticPartitionsDefinition(list(PARTITIONS))
PER_RUN_ENV = "LMPIPE_PARTITIONS_PER_RUN"


def backfill_policy() -> dg.BackfillPolicy:
    """One run covers every requested partition (its stages spread them over worker processes), unless
    ``$LMPIPE_PARTITIONS_PER_RUN`` sets how many partitions a run of a backfill takes: on a cluster, 1 or a few,
    so a backfill's runs go to different machines (run launcher) or workers (executor)."""
    raw = os.environ.get(PER_RUN_ENV, "")
    if not raw:
        return dg.BackfillPolicy.single_run()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"${PER_RUN_ENV}={raw!r}: must be a whole number of partitions per run >= 1")
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=int(raw))


BACKFILL = backfill_policy()
WORKERS_ENV = "LMPIPE_DATA_WORKERS"
ALL_PARTITIONS = {
    "dagster/asset_partition_range_start": PARTITIONS[0],
    "dagster/asset_partition_range_end": PARTITIONS[-1],
}
"""Run tags that make one run cover every partition of the data stages."""
RUN_FIGURES = ("partitions", "partitions_rebuilt")
"""Metadata of a partitioned stage about the whole run (the same on each partition), with the ``*_in_run`` sums."""
A = TypeVar("A", bound=Artifact)


def data_workers() -> int:
    """Worker processes per data stage: ``$LMPIPE_DATA_WORKERS``, else the cores this process may use."""
    raw = os.environ.get(WORKERS_ENV, "")
    if not raw:
        return default_workers()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"${WORKERS_ENV}={raw!r}: must be a whole number of worker processes >= 1")
    return int(raw)


@dataclass(frozen=True)
class PartitionWork:
    """How to build one partition: ``build(staging_dir)`` (picklable: a module-level function or a partial of
    one), and what it is built from (``inputs``, digested into the handle's memo)."""

    build: Callable[[Any], Any]
    inputs: dict[str, Any]


def build_partitions(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    asset: str,
    kind: type[A],
    work: dict[str, PartitionWork],
    code_version: str,
) -> tuple[dict[str, A], set[str]]:
    """Each partition's handle, and the keys built in this run (the others were reused as they were).

    Partitions whose memo matches their stored handle are reused; the rest are built in worker
    processes and published one by one. When some fail, the others are still published (and
    recorded, so a re-run builds only the failed ones) and the error names each failed partition.
    """
    handles: dict[str, A] = {}
    todo: list[tuple[str, str]] = []
    for key, job in work.items():
        memo = digest_of({"code_version": code_version, **job.inputs})
        previous = _stored(store, asset, key, kind, context.log.warning)
        if previous is not None and previous.memo == memo:
            handles[key] = previous
        else:
            todo.append((key, memo))
    progress = reporter(context, asset)
    built: set[str] = set()
    failures: list[tuple[str, BaseException]] = []
    with contextlib.ExitStack() as stack:
        staging = {key: stack.enter_context(store.stage(asset)) for key, _ in todo}
        jobs = [(work[key].build, staging[key]) for key, _ in todo]
        done = [0]

        def finished(_: int) -> None:
            done[0] += 1
            progress("partitions", done[0] + len(handles), len(work))

        workers = min(data_workers(), max(1, len(todo)))
        context.log.info(f"{asset}: {len(todo)} of {len(work)} partitions to build, {workers} worker(s)")
        results = run_parallel(call, jobs, workers, on_done=finished)
        for (key, memo), (_, error) in zip(todo, results, strict=True):
            if error is not None:
                failures.append((key, error))
                continue
            location, version = store.publish(staging[key], asset)
            handle = kind(location=location, data_version=version, path=store.local_path(location), memo=memo)
            store.write_ref(partition_ref(asset, key), handle.ref())
            handles[key], _ = handle, built.add(key)
        if len(failures) == 1:  # raised as it is, so a full disk (say) is explained like any other stage's
            key, error = failures[0]
            error.add_note(f"{asset} partition {key}; the other partitions are published and will not be built again")
            raise error
        if failures:
            by_error: dict[str, list[str]] = {}  # one line per distinct error (one bad URL fails every partition)
            for k, e in failures:
                by_error.setdefault(str(e), []).append(k)
            each = "; ".join(f"partition{'s' * (len(ks) > 1)} {', '.join(ks)}: {e}" for e, ks in by_error.items())
            raise ValueError(
                f"{asset}: {len(failures)} of {len(work)} partitions failed (the others are published "
                f"and will not be built again): {each}"
            )
    return {key: handles[key] for key in work}, built


def _stored(store: ArtifactStore, asset: str, key: str, kind: type[A], warn: Callable[[str], None]) -> A | None:
    """The partition's recorded handle, or None when there is none or it cannot be opened any more (a damaged one
    is reported through ``warn`` and built again)."""
    try:
        ref = store.read_ref(partition_ref(asset, key))
    except (FileNotFoundError, ValueError, OSError):
        return None
    try:
        handle = open_ref(store, ref)
        handle.manifest  # noqa: B018 - the artifact is still there and readable
    except (FileNotFoundError, ValueError, OSError) as e:
        warn(f"{asset} partition {key} is built again: {e}")
        return None
    return handle if isinstance(handle, kind) else None


def partition_result(
    context: dg.AssetExecutionContext,
    handles: dict[str, Artifact],
    built: set[str],
    per_partition: Callable[[Artifact], dict[str, Any]],
    metadata: dict[str, Any],
    config: dg.Config,
) -> dg.MaterializeResult:
    """The partitions' handles with each one's metadata (its own figures, ``rebuilt``, its data version) and the
    run's shared ``metadata``."""
    for key, handle in handles.items():
        own = {
            **per_partition(handle),
            "rebuilt": key in built,
            "data_version": handle.data_version,
            "artifact_path": dg.MetadataValue.path(handle.location),
        }
        context.add_asset_metadata(own, partition_key=key)
    manifest = reproducibility(context, config, {})
    shared = {
        **metadata,
        "partitions_rebuilt": len(built),
        "partitions": len(handles),
        "config_sha256": manifest["config_sha256"],
        "reproducibility": dg.MetadataValue.json(manifest),
    }
    return dg.MaterializeResult(value=handles, metadata=shared)
