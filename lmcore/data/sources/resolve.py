"""Specs resolved into sources: local paths and globs listed, remote files listed and fetched, and the claims of
all sources checked against each other."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from lmcore.data.sources import builtin
from lmcore.data.sources.fetch import Fetcher, url_name
from lmcore.data.sources.formats import SUPPORTED, is_supported
from lmcore.data.sources.hf import HFSource, hf_local
from lmcore.data.sources.policy import ReadContext
from lmcore.data.sources.source import BuiltinSource, FileSource, Source, SourceFile
from lmcore.data.sources.spec import GLOB_CHARS, Spec, parse_spec


def open_sources(
    specs: Sequence[str],
    ctx: ReadContext,
    fetcher: Fetcher,
    *,
    hf_split: str = "train",
    cache_dir: Path | None = None,
    download: bool = True,
    hf_streaming: bool = False,
    unit_bytes: int | None = None,
) -> list[Source]:
    """Resolve every spec: list files and fetch remote ones (``download=False``: only their
    versions). Problems of all specs are collected and raised together. ``hf_streaming`` reads
    Hugging Face datasets batch by batch instead of converting them to Arrow in the cache first.
    ``unit_bytes``: local files larger than this are cut into parts (lmcore.data.sources.ranges), local Hugging
    Face datasets into shards (lmcore.data.sources.hf); remote files, whose bytes are not at hand when only
    versions are asked for, stay whole."""
    sources = []
    for raw in specs:
        spec = parse_spec(raw)
        if spec.kind == "builtin":
            sources.append(BuiltinSource(spec, builtin.NAME))
        elif spec.kind == "hf":
            local = hf_local(spec)
            label = spec.label or (local.resolve().name if local else spec.target)
            if spec.hf_config and not spec.label:
                label += f":{spec.hf_config}"
            hf = HFSource(spec, label, hf_split, cache_dir, hf_streaming)
            hf.unit_bytes = unit_bytes
            sources.append(hf)
        else:
            resolve = _resolve_local if spec.kind == "local" else _resolve_remote
            try:
                source = resolve(spec, ctx, fetcher, download)
                source.unit_bytes = unit_bytes if spec.kind == "local" else None
                sources.append(source)
            except (ConnectionError, FileNotFoundError, ValueError) as e:  # collected, raised below
                if e is ctx.problems.raised:
                    raise
                ctx.problems.add(str(e), type(e))
    owner: dict[str, str] = {}
    for source in sources:
        for claim in source.claims:
            if (other := owner.setdefault(claim, source.spec.raw)) != source.spec.raw:
                ctx.problems.add(
                    f"sources {other!r} and {source.spec.raw!r} both contain {claim!r}, so its "
                    "documents would appear twice with the same doc_id; list it once, or label one: 'NAME=SPEC'"
                )
                break
    ctx.problems.raise_if_any()
    return sources


def _resolve_local(spec: Spec, ctx: ReadContext, fetcher: Fetcher, download: bool) -> FileSource:
    target = os.path.expanduser(spec.target)
    named = False
    if GLOB_CHARS.search(target):
        prefix = target[: GLOB_CHARS.search(target).start()]  # type: ignore[union-attr]
        root = Path(prefix.rsplit("/", 1)[0] or "/") if "/" in prefix else Path(".")
        matched = [Path(p) for p in sorted(glob.glob(target, recursive=True))]
        paths = [p for p in matched if _regular(p, root, spec, ctx)]
        if not paths:
            raise FileNotFoundError(f"source {spec.raw!r}: the pattern matches no files; check the path")
    elif os.path.isdir(target):
        root = Path(target)
        paths = [p for p in root.rglob("*") if _regular(p, root, spec, ctx)]
    elif os.path.isfile(target):
        root, paths, named = Path(target).parent, [Path(target)], True
    else:
        raise FileNotFoundError(
            f"source {spec.raw!r}: no such file or directory ({Path(target).absolute()}); check the path"
        )
    label = spec.label or root.resolve().name
    files = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if _keep(spec, path.name, str(path), named, ctx):
            files.append(SourceFile(rel, path.name, str(path), path))
    return FileSource(spec, label, sorted(files, key=lambda f: f.rel), single=named)


def _regular(path: Path, root: Path, spec: Spec, ctx: ReadContext) -> bool:
    """Whether a path listed under a source folder is a file to read: a regular file, or a symlink to one inside
    the folder (or outside, with ``links_out='follow'``). Folders are walked, not read; a symlinked folder and a
    special file (FIFO, socket, device) are passed over and counted; a link out of the folder is refused. Hidden
    entries are left out before any of that."""
    if any(part.startswith(".") for part in path.relative_to(root).parts):
        return False
    if path.is_symlink():
        target = path.resolve()
        if path.is_dir():
            ctx.skipped["symlinked_folder"] += 1
            return False
        if not target.is_relative_to(root.resolve()) and ctx.links_out != "follow":
            raise ValueError(
                f"source {spec.raw!r}: {path} is a symlink to {target}, outside the source folder {root}; remove "
                "the link, or set raw_corpus.links_out: follow to read what such links point to"
            )
        if not target.is_file():
            ctx.skipped["broken_or_special_link"] += 1
            return False
        return True
    if path.is_file():
        return True
    if not path.is_dir():
        ctx.skipped["special_file"] += 1
    return False


def _resolve_remote(spec: Spec, ctx: ReadContext, fetcher: Fetcher, download: bool) -> FileSource:
    url = spec.target
    parts = urlsplit(url)
    listing = fetcher.list_files(url)
    named = listing is None
    if listing is None:
        rel = url_name(url) + (f"?{parts.query}" if parts.query else "")
        root = parts.path.rstrip("/").rsplit("/", 1)[0]
        _keep(spec, url_name(url), url, True, ctx)
        listing = [(rel, url)]
    elif not listing:
        raise FileNotFoundError(f"source {spec.raw!r}: no files there; check the URL")
    else:
        path = parts.path
        root = path[: m.start()].rsplit("/", 1)[0] if (m := GLOB_CHARS.search(path)) else path.rstrip("/")
        listing = [(rel, u) for rel, u in listing if _keep(spec, url_name(u), u, False, ctx)]
    label = spec.label or f"{parts.netloc}{root}".strip("/")
    files = []
    for rel, file_url in listing:
        if download:
            got = fetcher.fetch(file_url)
            files.append(SourceFile(rel, url_name(file_url), file_url, got.path, got.version))
        else:
            files.append(SourceFile(rel, url_name(file_url), file_url, None, fetcher.version(file_url)))
    return FileSource(spec, label, files, single=named)


def _keep(spec: Spec, name: str, where: str, named: bool, ctx: ReadContext) -> bool:
    """Whether a listed file has a readable type; a file named by the spec itself must have one."""
    if is_supported(name):
        return True
    if named:
        raise ValueError(f"source {spec.raw!r}: cannot tell how to read {where} from its name; supported: {SUPPORTED}")
    ctx.skipped["unsupported_format"] += 1
    return False
