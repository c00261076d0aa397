"""The offline default corpus ``builtin:python-docs``: the running Python's own documentation.

Two kinds of document, in a fixed order:

* one per ``pydoc_data.topics`` entry (the language reference topics ``help()`` shows),
  sorted by topic name;
* one per public standard-library module (and public submodule of a package), sorted by
  name, holding the module docstring and then one entry per public class, function and
  method that has its own docstring. Each entry opens with a Markdown heading carrying the
  qualified name and, where ``inspect.signature`` knows it, the signature::

      ## json.dumps(obj, *, skipkeys=False, ensure_ascii=True, ...)
      ### json.JSONEncoder.encode(self, o)

Modules are imported in a child interpreter (``python -I``), never in the caller: imports
cannot print into the caller's output, pollute its ``sys.modules``, or hang it (each import
has a time limit, and so does the child). Default values in signatures are rendered without
memory addresses or set/dict ordering, so the text is deterministic for a given Python build.

The text does not depend on where or by whom it is built. The child runs without site-packages
(``-S``: no ``.pth`` hooks, no third-party module shadowing a missing stdlib one), in UTF-8 mode
(``-X utf8``: no locale-dependent encodings) and with an empty environment (no ``HOME``,
``USER``, ``TMPDIR``, ``LANG``, ``TZ`` of the caller). Defaults computed from the install are
rendered by name (see ``_install_values``): ``platform.architecture(executable=<sys.executable>)``,
``sysconfig.get_paths(scheme=<sysconfig.get_default_scheme()>)``, and ``<sys.prefix>``,
``<home>``, ``<cwd>`` and the like inside path strings.

Skipped: private modules (leading ``_``), any ``test``/``tests`` package, the modules in
``SKIP_MODULES`` and their submodules, the submodules of ``SKIP_SUBMODULES_OF`` (each with
the reason), and modules that fail to import or take longer than
``IMPORT_TIMEOUT_S`` to import (typically optional C extensions missing from the build).

This module must stay importable with the standard library alone: the child runs this file
as a script.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

NAME = "python-docs"
FORMAT_VERSION = 2
"""Bump when the extracted text changes for the same Python, so the source version changes.

2: install-dependent defaults rendered by name; the child runs with ``-S -X utf8`` and an empty environment."""

IMPORT_TIMEOUT_S = 10
CHILD_TIMEOUT_S = 600.0

SKIP_MODULES = {
    "antigravity": "opens a web browser on import",
    "this": "prints on import",
    "idlelib": "GUI application",
    "tkinter": "GUI toolkit; needs a display",
    "turtle": "GUI (tkinter)",
    "turtledemo": "GUI demos",
    "test": "CPython's own test suite",
    "pydoc_data": "read separately as the topics documents",
    "lib2to3": "deprecated; mostly grammar tables",
    "distutils": "deprecated (removed in Python 3.12)",
    "ensurepip": "bundles pip wheels; no API documentation",
    "posix": "platform alias of os",
    "nt": "platform alias of os",
    "msilib": "Windows-only and deprecated",
    "xxlimited": "C-API test module",
    "xxlimited_35": "C-API test module",
    "xxsubtype": "C-API test module",
    "sre_compile": "deprecated alias of re internals",
    "sre_constants": "deprecated alias of re internals",
    "sre_parse": "deprecated alias of re internals",
}

SKIP_SUBMODULES_OF = {"encodings": "one codec per submodule; no API documentation"}

GENERIC_NAMES = frozenset({"", "localhost", "localhost.localdomain", "root", "user"})
"""User or host names too common to stand for this machine: never replaced in defaults."""


def version() -> str:
    """Content version of the builtin corpus: format version, Python version and platform."""
    return f"{NAME}-v{FORMAT_VERSION}/python-{platform.python_version()}/{sys.platform}"


def iter_documents(timeout_s: float = CHILD_TIMEOUT_S) -> Iterator[tuple[str, str, str]]:
    """Yield ``(kind, name, text)`` with kind ``"topic"`` or ``"module"``, in a fixed order."""
    with tempfile.TemporaryDirectory(prefix="lmcore-python-docs-") as tmp:
        out = Path(tmp) / "docs.jsonl"
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-S", "-X", "utf8", str(Path(__file__).resolve()), str(out)],
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout_s,
                cwd=tmp,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(
                f"builtin:{NAME}: extracting the standard library docs took over {timeout_s:.0f} s"
            ) from e
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"builtin:{NAME}: the extraction child failed (exit {proc.returncode}):\n{tail}")
        with open(out, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                yield row["kind"], row["name"], row["text"]


def _child_env() -> dict[str, str]:
    """The child's whole environment: nothing of the caller's but what Windows needs to start."""
    env = {"TZ": "UTC"}
    if sys.platform == "win32" and "SYSTEMROOT" in os.environ:
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    return env


# --- everything below runs in the child interpreter -------------------------------------------


@functools.lru_cache(maxsize=1)
def _install_values() -> tuple[list[tuple[re.Pattern[str], str]], dict[str, str]]:
    """What differs between installs, machines and users, each with the name it is rendered as.

    Returns ``(paths, names)``. ``paths``: a pattern per absolute path (the interpreter, the
    prefixes, this project, the working, home and temp directories), longest first, matching
    it as a whole path component run inside a string. ``names``: values replaced only when they
    are the whole default (the install scheme, the user and host name).
    """
    import getpass
    import socket
    import sysconfig

    here = Path(__file__).resolve().parents
    candidates = [
        ("sys.executable", sys.executable),
        ("sys.executable", getattr(sys, "_base_executable", "")),
        ("sys.executable", os.path.realpath(sys.executable)),
        ("sys.prefix", sys.prefix),
        ("sys.exec_prefix", sys.exec_prefix),
        ("sys.base_prefix", sys.base_prefix),
        ("sys.base_exec_prefix", sys.base_exec_prefix),
        ("lmcore install", str(here[min(3, len(here) - 1)])),  # the folder holding lmcore/
        ("cwd", os.getcwd()),
        ("home", os.path.expanduser("~")),
        ("tempfile.gettempdir()", tempfile.gettempdir()),
    ]
    seen: dict[str, str] = {}
    for label, path in candidates:
        if os.path.isabs(path) and os.path.dirname(path) != path:  # never "/" or "C:\\"
            seen.setdefault(path, label)
    paths = [
        (re.compile(r"(?<![\w.~-])" + re.escape(path) + r"(?![\w.~-])"), f"<{label}>")
        for path, label in sorted(seen.items(), key=lambda item: -len(item[0]))
    ]
    names = {sysconfig.get_default_scheme(): "<sysconfig.get_default_scheme()>"}
    for label, get in (("user", getpass.getuser), ("host", socket.gethostname), ("host", platform.node)):
        try:
            value = get()
        except (OSError, KeyError, ImportError):  # no user or host name: nothing to hide
            continue
        if value not in GENERIC_NAMES:
            names.setdefault(value, f"<{label}>")
    return paths, names


def _str_repr(value: str) -> str:
    """``repr`` of a string default, with install-dependent values replaced by their names."""
    paths, names = _install_values()
    if value in names:
        return names[value]
    for pattern, label in paths:
        if pattern.fullmatch(value):
            return label
        value = pattern.sub(label, value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _stable_repr(value: object, depth: int = 0) -> str:
    """A repr without memory addresses or hash-dependent ordering."""
    import enum

    if depth > 3:
        return "..."
    if isinstance(value, str):
        return _str_repr(value)
    if value is None or isinstance(value, (bool, int, float, complex, bytes)):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, (set, frozenset)):
        items = sorted(_stable_repr(v, depth + 1) for v in value)
        body = ", ".join(items)
        return f"{{{body}}}" if isinstance(value, set) and items else f"{type(value).__name__}({{{body}}})"
    if isinstance(value, tuple):
        body = ", ".join(_stable_repr(v, depth + 1) for v in value)
        return f"({body},)" if len(value) == 1 else f"({body})"
    if isinstance(value, list):
        return "[" + ", ".join(_stable_repr(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(f"{_stable_repr(k, depth + 1)}: {_stable_repr(v, depth + 1)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if isinstance(name, str) and (callable(value) or isinstance(value, type(sys))):
        return name
    return f"<{type(value).__name__}>"


class _Shown:
    """Stands in for a default value so ``str(Signature)`` prints our stable repr."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature(obj: object) -> str:
    import inspect

    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return ""
    params = [
        p if p.default is inspect.Parameter.empty else p.replace(default=_Shown(_stable_repr(p.default)))
        for p in sig.parameters.values()
    ]
    try:
        text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    except (TypeError, ValueError):
        return ""
    if text == "(*args, **kwargs)":
        return ""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _doc(obj: object) -> str:
    import inspect

    raw = getattr(obj, "__doc__", None)
    return inspect.cleandoc(raw).strip() if isinstance(raw, str) else ""


def _members(cls: type, qualname: str) -> list[str]:
    import inspect

    parts = []
    for attr in sorted(vars(cls)):
        if attr.startswith("_"):
            continue
        raw = vars(cls)[attr]
        target = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        if isinstance(target, property) or inspect.isdatadescriptor(target):
            heading = f"### {qualname}.{attr}"
        elif inspect.isroutine(target):
            heading = f"### {qualname}.{attr}{_signature(target)}"
        else:
            continue
        doc = _doc(target)
        if doc:
            parts.append(f"{heading}\n\n{doc}")
    return parts


def _module_text(mod: object, modname: str) -> str:
    import inspect

    exported = getattr(mod, "__all__", None)
    names = sorted(set(exported)) if isinstance(exported, (list, tuple)) else sorted(vars(mod))
    parts = [f"# {modname}"]
    if doc := _doc(mod):
        parts.append(doc)
    for attr in names:
        if not isinstance(attr, str) or attr.startswith("_"):
            continue
        obj = vars(mod).get(attr)
        owner = getattr(obj, "__module__", None)
        if exported is None and owner not in (modname, "_" + modname):
            continue  # imported from elsewhere; documented under its own module
        qualname = f"{modname}.{attr}"
        if inspect.isclass(obj):
            if doc := _doc(obj):
                parts.append(f"## {qualname}{_signature(obj)}\n\n{doc}")
            parts.extend(_members(obj, qualname))
        elif inspect.isroutine(obj) and (doc := _doc(obj)):
            parts.append(f"## {qualname}{_signature(obj)}\n\n{doc}")
    return "\n\n".join(parts) + "\n" if len(parts) > 1 else ""


def _import(modname: str) -> object | None:
    import contextlib
    import importlib
    import io
    import signal
    import warnings

    def _timeout(signum, frame):  # noqa: ARG001
        raise TimeoutError(modname)

    has_alarm = hasattr(signal, "SIGALRM")
    if has_alarm:
        signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(IMPORT_TIMEOUT_S)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            return importlib.import_module(modname)
    except BaseException:  # noqa: BLE001 - any failure to import means "skip this module"
        return None
    finally:
        if has_alarm:
            signal.alarm(0)


def _module_names() -> list[str]:
    import pkgutil

    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP_MODULES:
            continue
        mod = _import(top)
        if mod is None:
            continue
        names.append(top)
        if top in SKIP_SUBMODULES_OF:
            continue
        for info in pkgutil.walk_packages(
            getattr(mod, "__path__", None) or [], prefix=top + ".", onerror=lambda _: None
        ):
            parts = info.name.split(".")
            if any(p.startswith("_") or p in ("test", "tests") for p in parts):
                continue
            names.append(info.name)
    return sorted(names)


def _child_main(out_path: str) -> None:
    from pydoc_data.topics import topics

    with open(out_path, "w", encoding="utf-8") as out:
        for key in sorted(topics):
            out.write(json.dumps({"kind": "topic", "name": key, "text": topics[key]}) + "\n")
        for modname in _module_names():
            mod = _import(modname)
            if mod is None:
                continue
            try:
                text = _module_text(mod, modname)
            except Exception:  # noqa: BLE001 - a module whose introspection breaks is skipped
                continue
            if text:
                out.write(json.dumps({"kind": "module", "name": modname, "text": text}) + "\n")


if __name__ == "__main__":
    _child_main(sys.argv[1])
