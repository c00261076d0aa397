"""The IO manager: asset values are typed handles whose references live in the artifact store."""

import dagster as dg

from assets.artifacts import Artifact, open_ref
from assets.resources import ArtifactStore


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
        if context.has_asset_partitions:  # a partitioned asset returns {partition key: handle}
            for key in context.asset_partition_keys:
                self.store.write_ref(partition_ref(name, key), _checked(name, obj[key]).ref())  # type: ignore[index]
        else:
            self.store.write_ref(name, _checked(name, obj).ref())  # type: ignore[arg-type]

    def load_input(self, context: dg.InputContext) -> Artifact | dict[str, Artifact]:
        name = context.asset_key.to_user_string()
        if context.has_asset_partitions:
            return {key: open_ref(self.store, self.store.read_ref(partition_ref(name, key)))
                    for key in context.asset_partition_keys}  # fmt: skip
        return open_ref(self.store, self.store.read_ref(name))


def partition_ref(asset: str, partition: str) -> str:
    """Where one partition's reference lives: ``{asset}/partitions/{key}/latest.json`` in the store."""
    return f"{asset}/partitions/{partition}"


def _checked(name: str, obj: object) -> Artifact:
    if not isinstance(obj, Artifact):
        raise TypeError(f"{name} returned {type(obj).__name__}, not an Artifact")
    return obj
