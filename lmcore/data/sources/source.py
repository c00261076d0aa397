"""A resolved source: its claims (the names its keys start with), version, units and records. The kinds here are
the builtin corpus and files (local or fetched); Hugging Face datasets are in :mod:`lmcore.data.sources.hf`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmcore.data.sources import builtin
from lmcore.data.sources.formats import read_file
from lmcore.data.sources.policy import ReadContext
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

    def units(self) -> list[tuple[str, str]]:
        """``(key, version)`` of each unit the source reads as a whole: a file of a file source, else the
        source itself. A unit's key is its claim, so it does not depend on where the data lives."""
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


class FileSource(Source):
    def __init__(self, spec: Spec, label: str, files: list[SourceFile], single: bool) -> None:
        super().__init__(spec, label)
        self.files = files
        self.single = single

    @property
    def claims(self) -> list[str]:
        return [f"{self.label}/{f.rel}" for f in self.files]

    def version(self) -> str:
        versions = [(f.rel, self._file_version(f)) for f in self.files]
        return versions[0][1] if self.single else listing_version(versions)

    def records(self, ctx: ReadContext) -> Iterator[Record]:
        for f in self.files:
            assert f.path is not None
            self._file_version(f)  # digest the bytes that are read, not a later edit
            for member, index, text in read_file(f.path, f.name, f.where, ctx):
                rel = f"{f.rel}!{member}" if member else f.rel
                yield Record(f"{self.label}\x00{rel}\x00{index}", f"{self.label}/{rel}", text)

    def units(self) -> list[tuple[str, str]]:
        return [(f"{self.label}/{f.rel}", self._file_version(f)) for f in self.files]

    def only(self, keys: set[str]) -> Source | None:
        files = [f for f in self.files if f"{self.label}/{f.rel}" in keys]
        return FileSource(self.spec, self.label, files, self.single) if files else None

    @staticmethod
    def _file_version(f: SourceFile) -> str:
        if f.version is None:
            assert f.path is not None
            f.version = f"sha256:{sha256_file(f.path)}"
        return f.version


def listing_version(files: list[tuple[str, str]]) -> str:
    """Version of many files: sha256 over their sorted ``(relative path, version)`` pairs."""
    return "sha256:" + hashlib.sha256("".join(f"{rel}\x00{v}\n" for rel, v in sorted(files)).encode()).hexdigest()
