"""The IO manager: asset values are typed handles whose references live in the artifact store."""

import dagster as dg

from assets.artifacts import Artifact, open_ref
from assets.resources import ArtifactStore


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Stores each asset's handle as ``{asset}/latest.json`` in the artifact store; opens it for downstream assets.

    Nothing is pickled under the local ``DAGSTER_HOME``: a second machine with the same store
    (``LMPIPE_ARTIFACTS_URL``) and instance can load any upstream asset.
    """

    store: dg.ResourceDependency[ArtifactStore]

    def handle_output(self, context: dg.OutputContext, obj: Artifact) -> None:
        if not isinstance(obj, Artifact):
            raise TypeError(f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, not an Artifact")
        self.store.write_ref(context.asset_key.to_user_string(), obj.ref())

    def load_input(self, context: dg.InputContext) -> Artifact:
        return open_ref(self.store, self.store.read_ref(context.asset_key.to_user_string()))
