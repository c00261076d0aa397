"""lmcore.workers.run_in_child: native work that a signal can still stop."""

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from lmcore.workers import run_in_child


class Stop(Exception):
    pass


@contextlib.contextmanager
def _alarm_in(seconds: float) -> Iterator[None]:
    """A signal (SIGALRM) whose handler raises Stop, ``seconds`` into the block, as SIGTERM's would."""

    def stop(signo, frame):
        raise Stop

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _die() -> None:
    os._exit(9)


def _fail() -> None:
    raise ValueError("bad record 7 in x.jsonl")


def test_the_result_and_the_error_come_back():
    assert run_in_child(divmod, 17, 5) == (3, 2)
    with pytest.raises(ValueError, match="bad record 7 in x.jsonl"):
        run_in_child(_fail)
    with pytest.raises(RuntimeError, match="_die ended without a result.*exit code 9"):
        run_in_child(_die)


def test_a_signal_stops_the_wait_at_once_and_the_child_with_it():
    """The parent waits in Python, so its handler runs while the child works (HF's trainer would hold the
    interpreter of the process it runs in); the child is killed."""

    start = time.monotonic()
    with _alarm_in(0.5), pytest.raises(Stop):
        run_in_child(time.sleep, 60)
    assert time.monotonic() - start < 10


def test_a_signal_stops_the_parallel_workers_too():
    from lmcore.workers import run_parallel

    start = time.monotonic()
    with _alarm_in(1.0), pytest.raises(Stop):
        run_parallel(time.sleep, [(60,), (60,), (60,)], 2)
    assert time.monotonic() - start < 15
