"""Same config, same weights on any x86-64 CPU: torch's CPU kernels pinned to one instruction set.

torch picks its CPU kernels (ATen's vectorized loops: softmax, reductions, the optimizers'
foreach updates, attention) by the widest instruction set the CPU has, once per process,
the first time a kernel runs. AVX512 and AVX2 kernels round differently, so the same
training run on another CPU gives other weights: after 100 steps of the demo model the
digests differ; after 1,200 the demo head's test accuracy is 5 texts of 307 apart.
:func:`pin_cpu_dispatch` makes every process the pipeline starts choose the same level,
AVX2 by default (every x86-64 CPU since 2013 has it), by setting ``ATEN_CPU_CAPABILITY``
before torch's first kernel. On an AVX512 machine the demo's pretraining runs about 15%
slower for it (``benchmarks/determinism.py``: ``pinned_slowdown``).

What else was checked, with torch 2.13's CPU wheel (MKL 2024.2, oneDNN 3.12):

- threads: 1, 2, 3 and 8 intra-op threads train the same weights;
- MKL (every float32 matmul): ``MKL_ENABLE_INSTRUCTIONS`` set to AVX2, AVX or SSE4_2 gives the
  same bits as the default, and the demo pipeline pinned to AVX2 on an AVX512 machine gave the
  figures of an AVX2-only machine to the last digit; ``MKL_CBWR=COMPATIBLE`` would change them
  and cost about 1.8x (one 30-step run), so it is not set;
- oneDNN: not called by float32 training on CPU (``ONEDNN_VERBOSE=1`` lists no primitive);
- ``torch.compile`` (off by default on CPU) takes its vector width from ``ATEN_CPU_CAPABILITY``
  too, but its C++ is built by the machine's own compiler: not checked across machines.

``LMPIPE_CPU_DISPATCH`` (environment) chooses the level: ``avx2`` (default), ``avx512``,
``default`` (ATen's portable kernels), or ``native`` (torch's own choice: fastest, not
reproducible across CPUs). Entry points call :func:`pin_cpu_dispatch` first thing (the CLI,
the Dagster code location, torchrun workers); lmcore itself has no import-time side effects.
"""

from __future__ import annotations

import logging
import os

DISPATCH_ENV = "LMPIPE_CPU_DISPATCH"
"""The environment variable that chooses the level, read once per process by :func:`pin_cpu_dispatch`."""
LEVELS = ("avx2", "avx512", "default", "native")
DEFAULT_LEVEL = "avx2"
_ATEN = "ATEN_CPU_CAPABILITY"

log = logging.getLogger(__name__)


def wanted_level(environ: os._Environ[str] | dict[str, str] = os.environ) -> str:
    """The level ``LMPIPE_CPU_DISPATCH`` asks for (``avx2`` when unset); ValueError naming it when invalid."""
    level = environ.get(DISPATCH_ENV, "").strip().lower() or DEFAULT_LEVEL
    if level not in LEVELS:
        raise ValueError(
            f"{DISPATCH_ENV}={environ[DISPATCH_ENV]!r}: must be one of {', '.join(LEVELS)} ({DEFAULT_LEVEL} when unset)"
        )
    return level


def pin_cpu_dispatch() -> str:
    """Pin this process's torch CPU kernels to the level ``LMPIPE_CPU_DISPATCH`` asks for; return the level torch
    uses (``torch.backends.cpu.get_cpu_capability()``, e.g. ``"AVX2"``).

    Overrides an ``ATEN_CPU_CAPABILITY`` the caller set (``native`` leaves it). Child processes inherit the
    choice. When torch already ran a kernel in this process, or the CPU lacks the level, torch keeps the
    level it has: that is logged as a warning, and the returned level says which one it is.
    """
    level = wanted_level()
    if level != "native":
        os.environ[_ATEN] = level
    import torch  # after the environment is set; importing torch runs no kernel

    actual = torch.backends.cpu.get_cpu_capability()
    if level != "native" and actual.lower() != level:
        log.warning(
            "torch dispatches CPU kernels to %s, not %s (%s): this CPU lacks it, or a torch kernel ran "
            "before pin_cpu_dispatch; trained weights may differ from other machines'",
            actual,
            level,
            DISPATCH_ENV,
        )
    return actual


def dispatch_level() -> str:
    """The level torch dispatches this process's CPU kernels to (recorded with every trained model)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()
