"""Helpers for the browser end-to-end test: `lmpipe ui` as a subprocess group and headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class UiServer:
    url: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.loads(resp.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]


def _lmpipe_command(port: int, config: Path | None) -> list[str]:
    exe = shutil.which("lmpipe", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "pipelines.cli"]
    return [*cmd, "ui", "--port", str(port), *(["--config", str(config)] if config else [])]


def _processes_with_env(marker: str) -> list[int]:
    """Pids of processes whose environment contains ``marker`` (our unique LMPIPE_HOME): stray children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in b"\0" + (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stop_group(proc: subprocess.Popen, marker: str, grace: float = 20) -> list[int]:
    """SIGTERM the whole process group, SIGKILL it after ``grace`` seconds, then any stray process of ours.

    Returns the pids that had to be killed outside the group (they escaped it)."""
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # `dagster dev` waits for its children on SIGTERM; whatever is still in the group now gets SIGKILL.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    strays = [pid for pid in _processes_with_env(marker) if _is_alive(pid)]
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return strays


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def lmpipe_ui(home: Path, log: Path, *, config: Path | None = None, start_timeout: float = 180) -> Iterator[UiServer]:
    """``lmpipe ui --port PORT [--config FILE]`` on a free port with ``LMPIPE_HOME=home``, in its own process group.

    Yields once ``/server_info`` answers and the code location has loaded; always kills the group."""
    port = free_port()
    # Hermetic: the given profile (else the default), and the instance and artifacts under ``home`` only.
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LMPIPE_PROFILE", "LMPIPE_ARTIFACTS_URL")}
    env["LMPIPE_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `lmpipe ui` execs `dagster`
    env["PYTHONUNBUFFERED"] = "1"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _lmpipe_command(port, config),
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = UiServer(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    strays: list[int] = []
    try:
        _wait_until_ready(server, start_timeout)
        yield server
    finally:
        strays = _stop_group(proc, f"\0LMPIPE_HOME={home}\0")
    if strays:
        print(f"warning: killed {len(strays)} process(es) that had left the UI's process group: {strays}")


_LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _wait_until_ready(server: UiServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"`lmpipe ui` exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=5) as resp:
                json.loads(resp.read())
            entries = server.graphql(_LOCATIONS)["workspaceOrError"].get("locationEntries") or []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                if errors:
                    raise RuntimeError(f"code location failed to load: {errors}")
                return
            last = f"locations: {[(e['name'], e['loadStatus']) for e in entries]}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
            last = repr(exc)
        time.sleep(1)
    raise TimeoutError(f"Dagster UI not ready after {timeout:.0f}s ({last}):\n{server.log_tail()}")
