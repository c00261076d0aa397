"""Running a job's steps on Celery workers (``dagster-celery``): the shared settings and the job.

Owns what both sides of a Celery run must agree on (broker, result backend, queue, result key prefix) and a
reconstructable job that runs on the Celery executor whichever executor its ``Definitions`` give it. Workers are
started as the README says (``python -m celery -A dagster_celery.app worker ...``); the tests start local ones
with ``tests.integration.celery_workers``.

``dagster-celery`` is a ``dev`` extra: nothing in the core install (``pipelines.definitions``, the CLI) may
import this module. It knows nothing of the project's assets.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

import dagster as dg
from dagster_celery import celery_executor

from pipelines.home import PROJECT_ROOT

BROKER_ENV, BACKEND_ENV = "LMPIPE_CELERY_BROKER", "LMPIPE_CELERY_BACKEND"


@dataclasses.dataclass(kw_only=True, frozen=True)
class CeleryConfig:
    """Where the steps of a Celery run go and where their results come back; workers and runs must share it."""

    broker: str = "amqp://guest:guest@127.0.0.1:5672//"
    """Broker URL (RabbitMQ). ``$LMPIPE_CELERY_BROKER`` in ``from_env``."""
    backend: str = "redis://127.0.0.1:6379/0"
    """Result backend URL (Redis). ``$LMPIPE_CELERY_BACKEND`` in ``from_env``."""
    queue: str = "dagster"
    """Queue the steps are sent to and the workers consume (dagster-celery's default is ``dagster``)."""
    key_prefix: str = ""
    """Prefix of every result key in Redis (Celery's ``global_keyprefix``); empty for none."""

    def __post_init__(self) -> None:
        problems = []
        if not self.broker.startswith(("amqp://", "pyamqp://", "amqps://")):
            problems.append(f"broker {self.broker!r}: expected an amqp://user:password@host:port/vhost URL (RabbitMQ)")
        if not self.backend.startswith(("redis://", "rediss://")):
            problems.append(f"backend {self.backend!r}: expected a redis://host:port/db URL")
        if not self.queue or any(c.isspace() or c == "," for c in self.queue):
            problems.append(f"queue {self.queue!r}: expected a non-empty name without spaces or commas")
        if problems:
            raise ValueError("CeleryConfig: " + "; ".join(problems))

    @classmethod
    def from_env(cls, **overrides: str) -> CeleryConfig:
        """The defaults, with ``$LMPIPE_CELERY_BROKER`` / ``$LMPIPE_CELERY_BACKEND`` where set, then ``overrides``."""
        urls = {
            k: v for k, v in (("broker", os.environ.get(BROKER_ENV)), ("backend", os.environ.get(BACKEND_ENV))) if v
        }
        return cls(**{**urls, **overrides})

    def settings(self) -> dict[str, Any]:
        """Celery settings beyond the URLs: the executor's ``config_source``, and the workers' config module."""
        options = {"task_default_queue": self.queue, "worker_prefetch_multiplier": 1}
        if self.key_prefix:
            options["result_backend_transport_options"] = {"global_keyprefix": self.key_prefix}
        return options

    def run_config(self) -> dict[str, Any]:
        """The run config's ``execution`` block for a job on the Celery executor."""
        return {
            "execution": {"config": {"broker": self.broker, "backend": self.backend, "config_source": self.settings()}}
        }


def celery_job(module: str, job_name: str, attr: str = "defs") -> dg.ReconstructableJob:
    """Job ``job_name`` of the ``Definitions`` at ``module.attr``, on the Celery executor, as workers rebuild it.

    Workers import ``module`` (it must be importable from the project root) and call ``load_celery_job``
    with the same arguments, so the executor needs no place in the ``Definitions`` themselves.
    """
    return dg.build_reconstructable_job(
        __name__, load_celery_job.__name__, (module, job_name, attr), reconstructor_working_directory=str(PROJECT_ROOT)
    )


def load_celery_job(module: str, job_name: str, attr: str = "defs") -> dg.JobDefinition:
    """The reconstructor behind ``celery_job`` (called in the launching process and in every worker)."""
    defs = getattr(importlib.import_module(module), attr)
    return defs.resolve_job_def(job_name).with_executor_def(celery_executor)
