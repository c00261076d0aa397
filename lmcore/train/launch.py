"""How a training run is launched: in the caller's process, or under torchrun on one or several machines.

:class:`LaunchConfig` says how many processes each machine (node) runs, how many machines take
part and how their torchrun agents find each other (the rendezvous). :func:`torchrun_argv` is
the command that starts one node's agent, which starts ``nproc_per_node`` processes of a
Python module; every node runs it with its own ``node_rank``. One process in all (the
default) needs no torchrun: the caller trains in its own process.

On one node the agents meet on a free local port (``--standalone``); across nodes they meet
at ``rdzv_endpoint``, a ``host:port`` on node 0 that every node can reach, under a name
(``rdzv_id``) that is the same on every node and new for every run. This module knows
nothing of Dagster or of what is trained, and reads no environment.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

RDZV_BACKENDS = ("c10d", "static")
_ENDPOINT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_RDZV_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(kw_only=True, frozen=True)
class LaunchConfig:
    """Processes and machines of one training run, and how their torchrun agents meet."""

    nproc_per_node: int = 1
    """Processes per machine: one per GPU (gloo processes on CPU). World size = nproc_per_node * nnodes;
    a world of one trains in the calling process, without torchrun."""
    nnodes: int = 1
    """Machines taking part; more than one needs rdzv_endpoint, and each machine runs its own agent."""
    node_rank: int = 0
    """This machine's index, 0..nnodes-1. The static backend numbers processes by it (node 0 holds rank 0);
    c10d numbers the nodes itself (by host name) and ignores it."""
    rdzv_endpoint: str | None = None
    """"host:port" where the agents meet: a free port on node 0 that every node can reach (e.g.
    "trainer-0.trainer:29500"). None: a free local port, for one machine (torchrun --standalone)."""
    rdzv_id: str | None = None
    """Name of the rendezvous: the same on every node, new for every run. None: the caller's job id
    (the Dagster run id), so the nodes of one run meet and a rerun never joins an old rendezvous."""
    rdzv_backend: str = "c10d"
    """"c10d": a TCP store at rdzv_endpoint, started by the agent on that host; "static": fixed node ranks,
    rdzv_endpoint is node 0's address and port."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("nproc_per_node", "nnodes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.node_rank < max(self.nnodes, 1):
            problems.append(f"node_rank must be in [0, nnodes={self.nnodes}), got {self.node_rank}")
        if self.rdzv_backend not in RDZV_BACKENDS:
            problems.append(f"rdzv_backend must be one of {RDZV_BACKENDS}, got {self.rdzv_backend!r}")
        if self.rdzv_endpoint is None and self.nnodes > 1:
            problems.append(
                f'nnodes={self.nnodes} needs rdzv_endpoint: "host:port" on node 0 that every node can reach, '
                'e.g. "node0.cluster:29500"'
            )
        elif self.rdzv_endpoint is not None and not _valid_endpoint(self.rdzv_endpoint):
            problems.append(f'rdzv_endpoint must be "host:port" with a port in 1..65535, got {self.rdzv_endpoint!r}')
        if self.rdzv_id is not None and not _RDZV_ID.match(self.rdzv_id):
            problems.append(f"rdzv_id must be letters, digits, '_', '.' or '-' (or None), got {self.rdzv_id!r}")
        if problems:
            raise ValueError("invalid LaunchConfig: " + "; ".join(problems))

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def in_process(self) -> bool:
        """One process in all: the caller trains in its own process, without torchrun."""
        return self.world_size == 1


def _valid_endpoint(endpoint: str) -> bool:
    m = _ENDPOINT.match(endpoint)
    return m is not None and 1 <= int(m["port"]) <= 65535


def torchrun_argv(
    launch: LaunchConfig, program: Sequence[str], *, job_id: str = "", python: str = sys.executable
) -> list[str]:
    """The command that starts node ``launch.node_rank``'s torchrun agent, running ``program`` in each process.

    ``program`` is what follows torchrun's options, e.g. ``["-m", "lmcore.train.entry", "--config", path]``.
    One node without an endpoint: ``--standalone``. Otherwise ``--nnodes``, ``--node-rank`` and the
    rendezvous (backend, endpoint, id: ``launch.rdzv_id`` or else ``job_id``; ValueError when neither is set).
    """
    agent = [python, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}"]
    if launch.nnodes == 1 and launch.rdzv_endpoint is None:
        return [*agent, "--standalone", *program]
    rdzv_id = launch.rdzv_id or job_id
    if not rdzv_id:
        raise ValueError("rdzv_id is None and no job_id was given: set rdzv_id to a name shared by every node")
    return [
        *agent,
        f"--nnodes={launch.nnodes}",
        f"--node-rank={launch.node_rank}",
        f"--rdzv-backend={launch.rdzv_backend}",
        f"--rdzv-endpoint={launch.rdzv_endpoint}",
        f"--rdzv-id={rdzv_id}",
        *program,
    ]
