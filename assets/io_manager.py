"""The IO manager: asset values are typed handles whose references live in the artifact store.

Each reference records the digest of the config that built it (``config_sha256``, the digest of the step's
resolved config) and the profile its code location had. A downstream asset only reads an upstream artifact
built with the config its own code location defines for that upstream (definition metadata ``CONFIG_SHA_KEY``,
set by ``pipelines.configured``), so two profiles' artifacts never mix silently: a mismatch is refused naming
both configs and what to do.
"""

from typing import Any

import dagster as dg

from assets.artifacts import Artifact, open_ref
from assets.resources import ArtifactStore
from lmcore.io import digest_of

CONFIG_SHA_KEY = "lmpipe/config_sha256"
"""Definition metadata of every asset: the digest of the config its code location runs by default."""
PROFILE_KEY = "lmpipe/profile"
"""Definition metadata of every asset: the profile of its code location."""
BLOCKING_KEY = "lmpipe/blocking_checks"
"""Definition metadata of an asset with blocking checks: their names, comma-separated."""


def config_digest(op_config: Any) -> str:
    """The digest of a resolved op config (the dict Dagster hands the step): what a reference records."""
    return digest_of(op_config if op_config is not None else {})


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Stores each asset's handle as ``{asset}/latest.json`` in the artifact store; opens it for downstream assets.

    A partitioned asset's handles are stored per partition (:func:`partition_ref`); a downstream asset
    gets ``{partition key: handle}`` for the partitions it reads. Nothing is pickled under the local
    ``DAGSTER_HOME``: a second machine with the same store
    (``LMPIPE_ARTIFACTS_URL``) and instance can load any upstream asset.
    """

    store: dg.ResourceDependency[ArtifactStore]

    def handle_output(self, context: dg.OutputContext, obj: Artifact | dict[str, Artifact]) -> None:
        name = context.asset_key.to_user_string()
        built = {
            "config_sha256": config_digest(context.step_context.op_config),
            "run_id": context.run_id,
            "profile": str(context.asset_spec.metadata.get(PROFILE_KEY, "")),
        }
        if context.has_asset_partitions:  # a partitioned asset returns {partition key: handle}
            for key in context.asset_partition_keys:
                ref = _checked(name, obj[key]).ref() | built  # type: ignore[index]
                self.store.write_ref(partition_ref(name, key), ref)
        else:
            self.store.write_ref(name, _checked(name, obj).ref() | built)

    def load_input(self, context: dg.InputContext) -> Artifact | dict[str, Artifact]:
        name = context.asset_key.to_user_string()
        upstream = context.upstream_output
        expected = upstream.asset_spec.metadata.get(CONFIG_SHA_KEY) if upstream is not None else None
        if context.has_asset_partitions:
            return {
                key: self._open(partition_ref(name, key), expected, f"{name} partition {key}", context)
                for key in context.asset_partition_keys
            }
        return self._open(name, expected, name, context)

    def _open(self, location: str, expected: str | None, what: str, context: dg.InputContext) -> Artifact:
        ref = self.store.read_ref(location)
        recorded = ref.get("config_sha256")
        if expected is not None and recorded is not None and recorded != expected:
            asset, mine = what.split()[0], context.upstream_output.asset_spec.metadata.get(PROFILE_KEY, "")  # type: ignore[union-attr]
            raise ValueError(
                f"{what}: the stored artifact was built by run {ref.get('run_id', '?')} (profile "
                f"{ref.get('profile', '?')!r}) with config sha256 {recorded[:12]}, but this code location (profile "
                f"{mine!r}) defines {asset} with config sha256 {expected[:12]}: another profile, a --set or a "
                f"Launchpad edit built it, and reading it would mix two configs' artifacts. Materialize {asset} with "
                f"this code location's config first (its Materialize button, or lmpipe run with this profile and "
                f"--select '{asset}+'), or give each profile its own LMPIPE_HOME"
            )
        if ref.get("run_id") not in (None, context.step_context.run_id) and context.upstream_output is not None:
            _refuse_failed_checks(context, ref, what)  # in the run that built it, Dagster itself holds downstream
        return open_ref(self.store, ref)


def _refuse_failed_checks(context: dg.InputContext, ref: dict[str, Any], what: str) -> None:
    """ValueError naming the check when a blocking check of the upstream asset failed on the version ``ref`` is, built
    by an earlier run: that version must not be consumed (Dagster holds the downstream steps of the run that built it,
    not those of a later run)."""
    upstream = context.upstream_output
    names = [n for n in str(upstream.asset_spec.metadata.get(BLOCKING_KEY, "")).split(",") if n]  # type: ignore[union-attr]
    if not names:
        return
    keys = [dg.AssetCheckKey(upstream.asset_key, name) for name in names]  # type: ignore[union-attr]
    latest = context.instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    for key, record in latest.items():
        evaluation = record.event.asset_check_evaluation if record.event is not None else None
        if evaluation is None or evaluation.passed:
            continue
        target = evaluation.target_materialization_data
        if target is not None and target.run_id == ref["run_id"]:
            why = evaluation.description or "see the check's metadata"
            raise ValueError(
                f"{what}: the stored version (run {ref['run_id']}) failed its blocking check {key.name}: {why}. "
                f"Fix that and materialize {what.split()[0]} again; its failed version is not used"
            )


def partition_ref(asset: str, partition: str) -> str:
    """Where one partition's reference lives: ``{asset}/partitions/{key}/latest.json`` in the store."""
    return f"{asset}/partitions/{partition}"


def _checked(name: str, obj: object) -> Artifact:
    if not isinstance(obj, Artifact):
        raise TypeError(f"{name} returned {type(obj).__name__}, not an Artifact")
    return obj
