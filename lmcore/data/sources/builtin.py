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
memory addresses or set ordering, so the text is deterministic for a given Python build.

Skipped: private modules (leading ``_``), any ``test``/``tests`` package, the modules in
``SKIP_MODULES`` and their submodules, the submodules of ``SKIP_SUBMODULES_OF`` (each with
the reason), and modules that fail to import or take longer than
``IMPORT_TIMEOUT_S`` to import (typically optional C extensions missing from the build).

This module must stay importable with the standard library alone: the child runs this file
as a script.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

NAME = "python-docs"
FORMAT_VERSION = 1
"""Bump when the extracted text changes for the same Python, so the source version changes."""

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


def version() -> str:
    """Content version of the builtin corpus: format version, Python version and platform."""
    return f"{NAME}-v{FORMAT_VERSION}/python-{platform.python_version()}/{sys.platform}"


def iter_documents(timeout_s: float = CHILD_TIMEOUT_S) -> Iterator[tuple[str, str, str]]:
    """Yield ``(kind, name, text)`` with kind ``"topic"`` or ``"module"``, in a fixed order."""
    with tempfile.TemporaryDirectory(prefix="lmcore-python-docs-") as tmp:
        out = Path(tmp) / "docs.jsonl"
        try:
            proc = subprocess.run(
                [sys.executable, "-I", str(Path(__file__).resolve()), str(out)],
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


# --- everything below runs in the child interpreter -------------------------------------------


def _stable_repr(value: object, depth: int = 0) -> str:
    """A repr without memory addresses or hash-dependent ordering."""
    import enum

    if depth > 3:
        return "..."
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
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
        return (
            "{"
            + ", ".join(f"{_stable_repr(k, depth + 1)}: {_stable_repr(v, depth + 1)}" for k, v in value.items())
            + "}"
        )
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
    import re

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
