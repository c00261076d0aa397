"""Source specs: the strings of ``CorpusConfig.sources`` parsed (grammar in :mod:`lmcore.data.sources`), and the
record every source yields."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from lmcore.data.sources import builtin

_LABEL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)=(.+)$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
GLOB_CHARS = re.compile(r"[*?[]")
"""The characters that make a local path or URL a glob."""


@dataclass(frozen=True)
class Spec:
    raw: str
    kind: str
    """``builtin``, ``hf``, ``local`` or ``remote``."""
    target: str
    """Builtin name, dataset name or path, local path or glob, or URL."""
    label: str | None = None
    hf_config: str | None = None


@dataclass(frozen=True)
class Record:
    key: str
    """Stable identity of the record within any corpus; hashed into ``doc_id``."""
    source: str
    """Human-readable origin for the ``source`` column, e.g. ``gutenberg/11-0.txt``."""
    text: str


def parse_spec(raw: str) -> Spec:
    """Parse one source spec (see the module docstring); raises ValueError on a malformed one."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"a source spec must be a non-empty string, got {raw!r}")
    label, rest = (m.group(1), m.group(2)) if (m := _LABEL.match(raw)) else (None, raw)
    if rest.startswith("builtin:"):
        if label is not None or rest[len("builtin:") :] != builtin.NAME:
            raise ValueError(f"unknown builtin source {raw!r}; the one builtin source is 'builtin:{builtin.NAME}'")
        return Spec(raw, "builtin", builtin.NAME)
    if rest.startswith("hf:"):
        body = rest[3:]
        if body.startswith(("/", ".", "~")) or re.match(r"^[A-Za-z]:[\\/]", body):
            name, config = body, ""
        else:
            name, _, config = body.partition(":")
        if not name:
            raise ValueError(f"source {raw!r} names no dataset; write hf:NAME, hf:NAME:CONFIG or hf:/path/to/saved")
        return Spec(raw, "hf", name, label, config or None)
    if rest.startswith("file://"):
        return Spec(raw, "local", unquote(rest[len("file://") :]), label)
    if _URL.match(rest):
        return Spec(raw, "remote", rest, label)
    return Spec(raw, "local", rest, label)
