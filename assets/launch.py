"""Where a training asset's work runs: in the asset's process, or under torchrun through a launcher resource.

A training asset builds a training spec (:mod:`lmcore.train.spec`: configs, the paths of its inputs, the
run directory) and calls :func:`run_training` with it and :class:`~lmcore.train.launch.LaunchConfig`.
A world of one process runs the spec in the asset's own process, as an object, with live progress. More
write the spec's ``to_dict()`` next to the runs and hand ``python -m assets.worker --config <spec>`` to
the ``launcher`` resource, which starts torchrun's agents through Dagster Pipes, so rank 0's records
stream into the run log and its result comes back as a Pipes message.

``TrainingLauncher`` is the interface; :class:`SubprocessLauncher` (the default) starts this
machine's agent as a subprocess. Launchers for several machines (Kubernetes pods, Slurm's
srun) subclass it and are chosen in ``pipelines/definitions.py``; the README shows how.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from assets import worker
from assets.resources import ArtifactStore
from assets.tracking import TrackerResource
from lmcore.io import write_json
from lmcore.train.job import Outlets
from lmcore.train.launch import LaunchConfig, torchrun_argv
from lmcore.train.spec import TrainingSpec


class TrainingLauncher(dg.ConfigurableResource, ABC):
    """Starts the torchrun agents of a training run and returns what rank 0 reported through Pipes."""

    @abstractmethod
    def launch(self, context: dg.AssetExecutionContext, launch: LaunchConfig, program: list[str]) -> list[Any]:
        """Run ``program`` (``["-m", module, *args]``) under torchrun as ``launch`` says, in a Pipes session;
        return the custom messages of every session it opened. Raises when any agent fails."""


class SubprocessLauncher(TrainingLauncher):
    """One machine: its torchrun agent as a subprocess of the step (``dg.PipesSubprocessClient``).

    Several machines need a launcher that starts an agent on each (Kubernetes pods, Slurm's srun; see the
    README), since Pipes here reads rank 0's messages from a file on this machine.
    """

    def launch(self, context: dg.AssetExecutionContext, launch: LaunchConfig, program: list[str]) -> list[Any]:
        if launch.nnodes > 1:
            raise ValueError(
                f"launch.nnodes={launch.nnodes}: the local launcher (SubprocessLauncher) starts this machine's "
                "processes only; set nnodes: 1, or register a cluster launcher in pipelines/definitions.py"
            )
        argv = torchrun_argv(launch, program, job_id=context.run.run_id)
        context.log.info(f"starting {shlex.join(argv)}")
        return dg.PipesSubprocessClient().run(command=argv, context=context).get_custom_messages()


def outlets(asset: str, store: ArtifactStore, tracker: TrackerResource) -> Outlets:
    """The spec's ``outlets``: ``asset``'s tracker and the store's run mirror."""
    return Outlets(tracker=tracker.spec(asset), mirror=store.run_mirror(asset))


def run_training(
    context: dg.AssetExecutionContext,
    launcher: TrainingLauncher,
    launch: LaunchConfig,
    spec: TrainingSpec,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    on_wait: Callable[[Path], None] | None = None,
) -> Any:
    """The result of ``spec.run()``: here for one process, else rank 0's, under torchrun through ``launcher``
    (the spec goes there as its ``to_dict()``, the result comes back through ``spec.result_from_dict``).
    ``callback`` and ``on_wait`` serve the run here; under torchrun the records reach the run log."""
    if launch.in_process:
        return spec.run(callback=callback, on_wait=on_wait)
    path = Path(spec.runs_dir) / f"launch-{context.run.run_id}.json"
    write_json(path, spec.to_dict())
    messages = launcher.launch(context, launch, ["-m", worker.__name__, "--config", str(path)])
    results = [m["result"] for m in messages if isinstance(m, dict) and "result" in m]
    if not results:
        raise RuntimeError(f"torchrun finished without a result from rank 0; see the run log ({path})")
    return spec.result_from_dict(results[-1])
