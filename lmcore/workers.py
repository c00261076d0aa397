"""Running independent pieces of work (a stage's partitions) in worker processes on one machine.

``run_parallel`` calls ``fn(*args)`` for each entry in worker processes forked from a clean
``forkserver`` (no state inherited from a parent that holds threads or open files; the
modules ``fn`` needs are imported once, in the server, so later stages start fast), at most
``workers`` at once, and returns the results in the order given. With one worker or one job it runs in this process,
so small runs pay no start-up; so it does in a daemonic process (a Celery prefork child),
which may not start processes of its own. Each worker runs with one math thread per library, so two
workers on two cores do not oversubscribe them. A failure of one job does not stop the
others; all results and errors come back, and the caller decides what to keep.
This module knows nothing of Dagster or of what the jobs do.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

_ONE_THREAD = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS", "POLARS_MAX_THREADS")


def _init_worker(parent: int) -> None:
    for name in _ONE_THREAD:
        os.environ[name] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """End this worker when the process that started the pool is gone (killed): no orphan keeps working."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass


def run_parallel(
    fn: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    workers: int,
    *,
    on_done: Callable[[int], None] | None = None,
) -> list[tuple[Any, BaseException | None]]:
    """``(result, None)`` or ``(None, error)`` for each ``fn(*job)``, in the order of ``jobs``.

    ``fn`` must be importable (a module-level function) and its arguments picklable. ``on_done(i)``
    is called in this process as job ``i`` finishes.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out: list[tuple[Any, BaseException | None]] = [(None, None)] * len(jobs)
    if workers == 1 or len(jobs) <= 1 or multiprocessing.current_process().daemon:  # a daemon may not fork
        for i, job in enumerate(jobs):
            try:
                out[i] = (fn(*job), None)
            except Exception as e:  # noqa: BLE001 - returned to the caller with its job
                out[i] = (None, e)
            if on_done is not None:
                on_done(i)
        return out
    ctx = multiprocessing.get_context("forkserver")
    # "__main__" too: the server imports the main script once, so workers need not (a CLI's imports take seconds)
    ctx.set_forkserver_preload(
        ["__main__", *sorted({"lmcore.workers", *map(_module, [fn, *(a for job in jobs for a in job)])})]
    )
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
    ) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                error = future.exception()
                out[i] = (None, error) if error is not None else (future.result(), None)
                if on_done is not None:
                    on_done(i)
        except BaseException:  # a signal's error (SIGTERM, Ctrl-C): stop the workers instead of waiting for them
            for future in futures:
                future.cancel()
            for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before 3.14
                process.kill()
            raise
    return out


def run_in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in one child process, for work that stays in native code for minutes (HF's BPE trainer): Python
    runs a signal handler only between bytecodes, so SIGTERM or Ctrl-C would wait for that work to return. Here this
    process waits in Python, so the handler runs at once; the child is then killed and the handler's error goes on.
    The child ends with this process too (kill -9). ``fn`` must be importable and its arguments and result
    picklable; its error is raised here. In a daemonic process (a Celery prefork child), which may not start
    processes, ``fn`` runs in this process."""
    if multiprocessing.current_process().daemon:
        return fn(*args)
    ctx = multiprocessing.get_context("forkserver")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, os.getpid(), fn, args), daemon=True, name=f"lmcore:{fn.__name__}")
    child.start()
    send.close()
    try:
        try:
            result, error = receive.recv()  # a signal's handler runs during this wait, and its error stops it
        except EOFError:  # the child is gone and its end of the pipe with it
            child.join()
            raise RuntimeError(
                f"the process running {fn.__module__}.{fn.__name__} ended without a result (exit code "
                f"{child.exitcode}; -9 is usually the kernel's out-of-memory killer)"
            ) from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if error is not None:
        raise error
    return result


def _child(send: Any, parent: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    try:
        out: tuple[Any, BaseException | None] = (fn(*args), None)
    except Exception as e:  # noqa: BLE001 - raised again in the parent
        out = (None, e)
    try:
        send.send(out)
    except Exception as e:  # noqa: BLE001 - an error (or result) that does not pickle: its text still gets there
        send.send((None, RuntimeError(f"{type(e).__name__}: {e} (sending {type(out[1] or out[0]).__name__})")))


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``: lets each job of one :func:`run_parallel` call run a function of its own."""
    return fn(*args)


def _module(obj: Any) -> str:
    """The module a job's function (or a ``functools.partial`` of one) lives in, to import it once in the server;
    ``lmcore.workers`` for other arguments."""
    func = getattr(obj, "func", obj)
    module = getattr(func, "__module__", None) if callable(func) else None
    return module if isinstance(module, str) and module.startswith("lmcore.") else "lmcore.workers"


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
