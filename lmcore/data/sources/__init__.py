"""Corpus sources: spec strings become versioned streams of records with stable keys.

Spec grammar (one string per entry of ``CorpusConfig.sources``)::

    builtin:python-docs      the running Python's documentation (see lmcore.data.sources.builtin)
    hf:NAME  hf:NAME:CONFIG  a Hugging Face dataset via datasets.load_dataset (split hf_split)
    hf:/path/to/saved        a dataset saved with Dataset.save_to_disk (datasets.load_from_disk)
    hf:/path/to/repo         a local directory laid out like a Hub dataset repository (data/*.parquet ...)
    PATH  DIR  GLOB          local file, directory (recursive) or glob; file://PATH works too
    URL                      any fsspec URL; http(s):// is one file, s3:// gs:// memory:// ...
                             may also name a directory or a glob
    LABEL=SPEC               any file or hf spec with an explicit label (see below)

Files are read in sorted order of their path relative to the spec's *root* (the directory
named, the directory holding a named file, or a glob's fixed prefix); hidden entries (a
path part starting with ``.``) are passed over; in a directory or glob, files of an
unsupported type are skipped and counted (``unsupported_format``), a named file of one is
an error. Remote files are downloaded into the cache first (lmcore.data.sources.fetch).

Every record carries a *key* that is hashed into its ``doc_id``. It does not depend on
where the data lives on this machine: ``{label}\\0{relative path}[!member]\\0{index}`` where
the label is the root's base name (local) or host and path (URL), so naming a directory
or one of its files gives the same ids, and files added to a directory leave the ids of
the others alone. A large local file read in parts (lmcore.data.sources.ranges), or a local
dataset read in shards (lmcore.data.sources.hf), gives its records the same keys as when it is
read whole. Builtin keys are ``python-docs\\0{topic|module}\\0{name}``, Hugging Face
keys ``hf:{label}\\0{split}\\0{row}`` (the same when streamed, ``hf_streaming``). Two sources that
would claim the same label and path are an error; ``LABEL=SPEC`` separates them. A source's
*version* is ``sha256:`` of a file's bytes, for many files the sha256 over sorted ``(relative
path, file version)``, a remote file's validator (see fetch), ``hf-revision:`` of a Hub
dataset, or builtin.version().
"""

from __future__ import annotations

from lmcore.data.sources.policy import ReadContext
from lmcore.data.sources.resolve import open_sources
from lmcore.data.sources.source import Source
from lmcore.data.sources.spec import Record, Spec, parse_spec

__all__ = ["Record", "ReadContext", "Source", "Spec", "open_sources", "parse_spec"]
