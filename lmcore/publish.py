"""Publishing a finished directory, content-addressed, and checking it when it is read.

A stage writes into a staging directory (``lmcore.io.staging_dir``), its manifest last; :func:`publish_dir` renames
it to ``parent/<sha256(manifest)[:16]>`` after writing :data:`INVENTORY`, the sha256 of every file in it. A reader
calls :func:`verify_dir` (or :func:`verify_file` for one file) before it trusts what it reads: an edited, truncated or
damaged file is named with what to do, and each file is read once per process. This module knows no stage.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lmcore.io import STAGING_PREFIX, UMASK, atomic_path, sha256_file


def publish_dir(staging: str | Path, parent: str | Path, manifest: str = "manifest.json") -> tuple[Path, str]:
    """Rename a finished staging directory to ``parent/<digest[:16]>``, content-addressed.

    The digest is the sha256 of its manifest, which lists the digest of every file, so
    the same content always lands at the same path and an existing version is never
    overwritten, unless it is damaged (:func:`verify_dir`): then this copy replaces it. Every file's sha256 goes in
    :data:`INVENTORY` first. Returns ``(final_path, digest)``.
    """
    staging, parent = Path(staging), Path(parent)
    manifest_path = staging / manifest
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: stage finished without writing its manifest")
    digest = sha256_file(manifest_path)
    write_inventory(staging)
    final = parent / digest[:16]
    os.chmod(staging, 0o777 & ~UMASK)
    try:
        os.rename(staging, final)
    except OSError:
        if not (final / manifest).exists():
            raise
        try:
            verify_dir(final)
            shutil.rmtree(staging)  # identical content is already published (possibly by a concurrent run)
        except ValueError:  # published before, and damaged since: this copy takes its place
            damaged = final.with_name(f"{STAGING_PREFIX}{final.name}.damaged")
            os.rename(final, damaged)
            os.rename(staging, final)
            shutil.rmtree(damaged, ignore_errors=True)
    return final, digest


INVENTORY = "SHA256SUMS"
"""Every file of a published directory with its sha256, in ``sha256sum`` format (``sha256sum -c SHA256SUMS`` checks
it by hand); readers check what they open against it (:func:`verify_dir`)."""
_VERIFIED: set[tuple[str, int, int, int]] = set()
"""Files this process has checked, by path, inode, size and mtime: each is read once, however often it is opened."""


def write_inventory(root: str | Path) -> None:
    root = Path(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != INVENTORY)
    with atomic_path(root / INVENTORY) as tmp:
        tmp.write_text("".join(f"{sha256_file(root / rel)}  {rel}\n" for rel in files), encoding="utf-8")


def verify_dir(root: str | Path) -> None:
    """ValueError naming the first file of a published directory that is missing or differs from its
    :data:`INVENTORY` (edited, truncated, a disk error), with what to do. A directory published before inventories
    existed passes unchecked."""
    root = Path(root)
    try:
        lines = (root / INVENTORY).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    asset = root.parent.name
    fix = (
        f"materialize {asset} again (lmpipe run --select '{asset}+'): a damaged version is rebuilt, not reused; "
        "if the message then names an upstream asset's file, materialize that one first"
    )
    for line in lines:
        expected, rel = line.split("  ", 1)
        verify_file(root / rel, expected, f"{root / INVENTORY} lists every file. {fix}")


def verify_file(path: str | Path, expected: str, fix: str) -> None:
    """ValueError naming ``path`` when it is missing or its sha256 is not ``expected`` (with ``fix``: what to do);
    read once per process while its inode, size and mtime stay the same."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{path} is missing from a published artifact; {fix}") from None
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    if (actual := sha256_file(path)) != expected:
        shared = f" It is hard-linked into {st.st_nlink - 1} other published file(s), damaged too." * (st.st_nlink > 1)
        raise ValueError(
            f"{path} is damaged: its sha256 is {actual[:12]}, but it was {expected[:12]} when it was written (edited, "
            f"truncated or a disk error).{shared} {fix}"
        )
    _VERIFIED.add(key)
