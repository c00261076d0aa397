"""Code versions derived from source: an asset module's version covers every project module it imports.

Owns the static import graph of the project packages (``lmcore`` and ``assets``) and the digest over it. A
module's closure is found by parsing source with ``ast``, never by importing: ``import a.b``, ``from a.b import c``
(``c`` a submodule or a name), relative imports and imports inside functions count; imports under
``if TYPE_CHECKING:`` do not (they never run). The package ``__init__`` modules that Python executes on the way to
a module count too. Third-party modules and ``pipelines`` are outside the graph. Must not know Dagster or lmcore:
it reads files, so it can version a tree that is not importable.

Usage: ``@dg.asset(..., code_version=code_version_of(__name__))``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lmcore", "assets")
"""Top-level packages whose modules are versioned; imports of anything else are ignored."""


def _module_files(root: str) -> dict[str, str]:
    """The file of every module of the project packages under ``root``, by name; a package's is its ``__init__.py``.

    One directory listing per package instead of a lookup per imported name: most names are not modules.
    """
    files: dict[str, str] = {}
    pending = [(os.path.join(root, package), package) for package in PACKAGES]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir():
                if entry.name.isidentifier() and entry.name != "__pycache__":
                    pending.append((entry.path, f"{prefix}.{entry.name}"))
            elif entry.name.endswith(".py") and entry.name[:-3].isidentifier() and entry.is_file():
                if entry.name == "__init__.py":
                    files[prefix] = entry.path  # a package wins over a module of the same name, as in Python
                else:
                    files.setdefault(f"{prefix}.{entry.name[:-3]}", entry.path)
    return files


# An import statement that starts a line (``import a.b``, ``from .a import (b, c)``), up to its end: a comment, a
# ``;``, the line's end, or the closing parenthesis. Import statements hold no strings, so this delimits them.
_LINE_IMPORT = re.compile(
    r"^[ \t\f]*(?:from[ \t\f]+[.\w]+[ \t\f]+)?import\b(?:[ \t\f]*\([^)]*\)|(?:\\\r?\n|[^\n\\#;])*)", re.M
)
# An import the line scan would miss: after ``;`` or ``:`` on the same line (``try: import a``).
_IMPORT_AFTER_COLON = re.compile(r"[;:][ \t\f]*(?:import|from[ \t\f]+[.\w]+[ \t\f]+import)\b")
_NESTING = (ast.stmt, ast.excepthandler, ast.match_case)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, at any depth, except those in the body of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:  # statements nest only in statements, so expressions are never walked
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, _NESTING))
    return found


def _parse_imports(source: bytes, filename: str) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``source`` that run when it is imported or its functions are called.

    Parsing a whole file is most of the cost of a version, so when every import starts a line and none is guarded
    by ``TYPE_CHECKING``, only the import statements are cut out and parsed. A line in a string that reads as an
    import can only add a module (a version that changes too often, never one that misses a change); a cut that
    does not parse means the scan misread the file, which is then parsed whole.
    """
    try:
        text = source.decode()
    except UnicodeDecodeError:
        text = ""  # a coding cookie: ast reads it
    if text and "TYPE_CHECKING" not in text and not _IMPORT_AFTER_COLON.search(text):
        statements = "\n".join(m.group().lstrip(" \t\f") for m in _LINE_IMPORT.finditer(text))
        try:
            return _import_nodes(ast.parse(statements, filename=filename))
        except SyntaxError:
            pass
    return _import_nodes(ast.parse(source, filename=filename))


@functools.lru_cache(maxsize=1024)
def _candidates(source: bytes, package: str, filename: str) -> tuple[str, ...]:
    """Project modules a module's source may import, with their parent packages; for ``from x import y`` both
    ``x`` and ``x.y`` (which is a module or a name in ``x``: the caller looks for its file).

    ``package`` is the package relative imports resolve against (the module itself for an ``__init__``). Cached on
    the source bytes, so an edited file is parsed again and an unchanged one is parsed once per process.
    """
    names: list[str] = []
    for node in _parse_imports(source, filename):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            if node.level - 1 >= len(parts):
                raise ValueError(f"{filename}: relative import beyond the top-level package {parts[0]!r}")
            head = ".".join(parts[: len(parts) - node.level + 1])
            base = f"{head}.{base}" if base else head
        names.append(base)
        names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    project = {parent for name in names if name.split(".", 1)[0] in PACKAGES for parent in _with_parents(name)}
    return tuple(sorted(project))


def _with_parents(name: str) -> list[str]:
    """``name`` and the packages Python imports before it: ``a.b.c`` → ``a``, ``a.b``, ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _closure(module: str, root: Path) -> dict[str, bytes]:
    """Source bytes of every project module that importing ``module`` from ``root`` may execute, by name."""
    files = _module_files(str(root))
    if module not in files:
        raise FileNotFoundError(f"no module {module!r} under {root}: expected a module of {PACKAGES} as a file there")
    sources: dict[str, bytes] = {}
    pending = _with_parents(module)
    while pending:
        name = pending.pop()
        if name in sources or (path := files.get(name)) is None:
            continue  # seen already, or a name defined in a package's __init__ rather than a module
        with open(path, "rb") as f:
            source = sources[name] = f.read()
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        pending.extend(_candidates(source, package, path))
    return sources


def project_imports(module: str, root: Path = PROJECT_ROOT) -> set[str]:
    """Names of the project modules ``module`` imports, transitively and statically, including itself and the
    package ``__init__`` modules executed on the way (``lmcore.data.shards`` brings ``lmcore`` and ``lmcore.data``).

    Raises ``FileNotFoundError`` when ``module`` is not a module of ``lmcore`` or ``assets`` under ``root``.
    """
    return set(_closure(module, Path(root)))


@functools.cache
def code_version_of(module: str, root: Path = PROJECT_ROOT) -> str:
    """First 12 hex digits of the sha256 over the sorted (name, source) pairs of ``module``'s import closure.

    It changes exactly when the source of a module that ``module`` reaches changes. Cached per (module, root) for
    the life of the process, as the code it describes is; call ``code_version_of.cache_clear()`` after editing.
    """
    h = hashlib.sha256()
    for name, source in sorted(_closure(module, Path(root)).items()):
        for part in (name.encode(), source):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.hexdigest()[:12]
