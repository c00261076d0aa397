"""A resolved source: its claims (the names its keys start with), version, units and records. The kinds here are
the builtin corpus and files (local or fetched); Hugging Face datasets are in :mod:`lmcore.data.sources.hf`.

A *unit* is what one partition reads as a whole: a file, or a part of a local file larger than ``unit_bytes``
(key ``<file key>@<index>``, see :mod:`lmcore.data.sources.ranges`), or a whole non-file source."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmcore.data.sources import builtin
from lmcore.data.sources.formats import read_file
from lmcore.data.sources.policy import ReadContext
from lmcore.data.sources.ranges import Part, part_version, plan_parts
from lmcore.data.sources.spec import Record, Spec
from lmcore.io import sha256_file


class Source:
    """One resolved spec, ready to yield records; ``claims`` are the names its keys start with."""

    def __init__(self, spec: Spec, label: str) -> None:
        self.spec = spec
        self.label = label

    @property
    def claims(self) -> list[str]:
        return [self.label]

    def version(self) -> str:
        raise NotImplementedError

    def records(self, ctx: ReadContext) -> Iterator[Record]:
        raise NotImplementedError

    def unit_keys(self) -> list[str]:
        """The keys of :meth:`units`, without reading any content."""
        return [self.claims[0]]

    def units(self) -> list[tuple[str, str]]:
        """``(key, version)`` of each unit the source reads as a whole: a file (or a part of one) of a file source,
        else the source itself. A unit's key starts with its claim, so it does not depend on where the data lives."""
        return [(self.claims[0], self.version())]

    def only(self, keys: set[str]) -> Source | None:
        """This source reading only the units named in ``keys`` (None when it has none of them)."""
        return self if self.claims[0] in keys else None


class BuiltinSource(Source):
    def version(self) -> str:
        return builtin.version()

    def records(self, ctx: ReadContext) -> Iterator[Record]:
        for kind, name, text in builtin.iter_documents():
            source = f"{builtin.NAME}:topics" if kind == "topic" else f"{builtin.NAME}:modules/{name}"
            if (kept := ctx.finish(text)) is not None:
                yield Record(f"{builtin.NAME}\x00{kind}\x00{name}", source, kept)


@dataclass
class SourceFile:
    rel: str
    name: str
    where: str
    path: Path | None = None
    version: str | None = None
    parts: tuple[int, ...] | None = None
    """The indices of the parts read, when the file is cut into parts and only some are read; None: all."""


class FileSource(Source):
    def __init__(
        self, spec: Spec, label: str, files: list[SourceFile], single: bool, unit_bytes: int | None = None
    ) -> None:
        """``unit_bytes``: local files larger than this are cut into parts (None: never)."""
        super().__init__(spec, label)
        self.files = files
        self.single = single
        self.unit_bytes = unit_bytes
        self._part_versions: dict[tuple[str, int], str] = {}

    @property
    def claims(self) -> list[str]:
        return [f"{self.label}/{f.rel}" for f in self.files]

    def version(self) -> str:
        """A whole file's digest; for many files, or a file of which only some parts are read, the digest of
        their listing (a part listed as ``<path>@<index>``)."""
        versions = []
        for f in self.files:
            if f.parts is None:
                versions.append((f.rel, self._file_version(f)))
            else:
                versions += [(key.removeprefix(f"{self.label}/"), self._version(f, p)) for key, p in self._parts_of(f)]
        whole = self.single and self.files[0].parts is None
        return versions[0][1] if whole else listing_version(versions)

    def records(self, ctx: ReadContext) -> Iterator[Record]:
        for f in self.files:
            assert f.path is not None
            for _, part in self._parts_of(f):
                self._version(f, part)  # digest the bytes that are read, not a later edit
                for member, index, text in read_file(f.path, f.name, f.where, ctx, part):
                    rel = f"{f.rel}!{member}" if member else f.rel
                    yield Record(f"{self.label}\x00{rel}\x00{index}", f"{self.label}/{rel}", text)

    def unit_keys(self) -> list[str]:
        return [key for f in self.files for key, _ in self._parts_of(f)]

    def units(self) -> list[tuple[str, str]]:
        return [(key, self._version(f, part)) for f in self.files for key, part in self._parts_of(f)]

    def only(self, keys: set[str]) -> Source | None:
        files = []
        for f in self.files:
            picked = [part for key, part in self._parts_of(f) if key in keys]
            if picked == [None]:
                files.append(f)
            elif picked:
                files.append(dataclasses.replace(f, parts=tuple(p.index for p in picked if p is not None)))
        return FileSource(self.spec, self.label, files, self.single, self.unit_bytes) if files else None

    def _parts_of(self, f: SourceFile) -> list[tuple[str, Part | None]]:
        """``(unit key, part)`` of each unit of a file that is read: ``(file key, None)`` for a whole file."""
        key = f"{self.label}/{f.rel}"
        if f.path is None or self.unit_bytes is None:  # remote files (unit_bytes None) stay whole
            return [(key, None)]
        parts = plan_parts(f.path, f.name, self.unit_bytes)
        if not parts:
            return [(key, None)]
        return [(f"{key}@{p.index}", p) for p in parts if f.parts is None or p.index in f.parts]

    def _version(self, f: SourceFile, part: Part | None) -> str:
        """The version of a unit: the file's digest, or the part's (each computed once)."""
        if part is None:
            return self._file_version(f)
        assert f.path is not None
        if (f.rel, part.index) not in self._part_versions:
            self._part_versions[f.rel, part.index] = part_version(f.path, part)
        return self._part_versions[f.rel, part.index]

    @staticmethod
    def _file_version(f: SourceFile) -> str:
        if f.version is None:
            assert f.path is not None
            f.version = f"sha256:{sha256_file(f.path)}"
        return f.version


def listing_version(files: list[tuple[str, str]]) -> str:
    """Version of many files: sha256 over their sorted ``(relative path, version)`` pairs."""
    return "sha256:" + hashlib.sha256("".join(f"{rel}\x00{v}\n" for rel, v in sorted(files)).encode()).hexdigest()
