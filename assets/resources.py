"""Resources: where artifacts live. An interface with a local implementation.

``ArtifactStore`` hands out staging directories and publishes finished ones under a
content-addressed name, so a failed or concurrent run never touches a published
version, and records the latest reference of each asset (``write_ref``/``read_ref``) for
the IO manager. ``LocalArtifactStore`` is the default (``$LMPIPE_HOME/artifacts``);
``FsspecArtifactStore`` publishes to object storage.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from lmcore.io import disk_errors, staging_dir, write_json
from lmcore.model.checkpoint import META_FILE, checkpoint_dir, verify_checkpoint
from lmcore.publish import publish_dir
from lmcore.train.mirror import CheckpointMirror

REF_FILE = "latest.json"
"""Per asset, the reference to its latest version that the IO manager hands downstream."""


def parse_ref(data: bytes, where: str | Path) -> dict[str, str]:
    """A stored reference, checked: ValueError naming the file when it is not one (re-materialize to fix)."""
    try:
        ref = json.loads(data)
    except ValueError:
        ref = None
    if not isinstance(ref, dict) or not all(isinstance(ref.get(k), str) for k in ("kind", "location", "data_version")):
        raise ValueError(f"{where}: not an artifact reference (kind, location, data_version); re-materialize the asset")
    return ref


class ArtifactStore(dg.ConfigurableResource, ABC):
    """Where stages write their outputs and downstream stages read them."""

    @abstractmethod
    def stage(self, asset: str) -> contextlib.AbstractContextManager[Path]:
        """A fresh local directory to write ``asset``'s output into."""

    @abstractmethod
    def publish(self, staging: Path, asset: str) -> tuple[str, str]:
        """Make a finished staging directory visible; returns ``(location, data_version)``."""

    @abstractmethod
    def local_path(self, location: str) -> Path:
        """A local directory holding the artifact at ``location`` (fetched if remote)."""

    @abstractmethod
    def write_ref(self, asset: str, ref: dict[str, str]) -> None:
        """Record ``ref`` as the latest version of ``asset`` (what the IO manager hands downstream)."""

    @abstractmethod
    def read_ref(self, asset: str) -> dict[str, str]:
        """The latest recorded reference of ``asset``; FileNotFoundError naming the asset if there is none."""

    @abstractmethod
    def cache_dir(self) -> Path:
        """Directory for download caches."""

    @abstractmethod
    def run_dir(self, asset: str) -> Path:
        """Where ``asset``'s training runs live; lmcore names each run inside it by its run key."""

    @abstractmethod
    def reports_dir(self) -> Path:
        """Where human-readable reports (JSON, Markdown) are written."""

    def run_mirror(self, asset: str) -> str | None:
        """Where ``asset``'s training runs publish their checkpoints (``lmcore.train.mirror``), or None when
        they stay in :meth:`run_dir` only."""
        return None

    def fetch_checkpoint(self, location: str) -> Path:
        """A local directory holding the checkpoint at ``location`` (a run-directory path, or a mirror URL)."""
        path = Path(location)
        if not (path / META_FILE).exists():
            raise FileNotFoundError(
                f"checkpoint {path} is not on this machine (training runs stay where they ran unless the store "
                "mirrors them: set LMPIPE_ARTIFACTS_URL); re-materialize the training asset here"
            )
        return path


class LocalArtifactStore(ArtifactStore):
    """Artifacts under the project home: ``{home}/artifacts/{asset}/{digest[:16]}/``."""

    home: str
    """The project home ($LMPIPE_HOME); read when a run starts, not when code loads."""

    @property
    def root(self) -> Path:
        return Path(self.home) / "artifacts"

    @contextlib.contextmanager
    def stage(self, asset: str) -> Iterator[Path]:
        """A staging directory under ``artifacts/<asset>``; a full or read-only disk is an error saying so."""
        with disk_errors(self.home, f"point LMPIPE_HOME (now {self.home}) at another directory"):
            with staging_dir(self.root / asset) as staging:
                yield staging

    def publish(self, staging: Path, asset: str) -> tuple[str, str]:
        final, digest = publish_dir(staging, self.root / asset)
        return str(final), digest

    def local_path(self, location: str) -> Path:
        path = Path(location)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: artifact is missing; re-materialize the asset that wrote it")
        return path

    def write_ref(self, asset: str, ref: dict[str, str]) -> None:
        write_json(self.root / asset / REF_FILE, ref)

    def read_ref(self, asset: str) -> dict[str, str]:
        path = self.root / asset / REF_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: {asset} was never materialized in this store; materialize it first")
        return parse_ref(path.read_bytes(), path)

    def cache_dir(self) -> Path:
        return Path(self.home) / "cache"

    def run_dir(self, asset: str) -> Path:
        return self.root / asset / "runs"

    def reports_dir(self) -> Path:
        return Path(self.home) / "reports"


class FsspecArtifactStore(ArtifactStore):
    """Artifacts on object storage (``s3://``, ``gs://``, any fsspec URL), staged and cached locally.

    ``{url}/{asset}/{digest[:16]}/`` holds each version; the manifest is uploaded last, so a
    version without one is incomplete and is re-uploaded. Reads download into the local
    cache once and check the manifest digest. Training runs live in a local directory and
    publish every checkpoint to ``{url}/{asset}/runs/{run_key}/`` (meta.json last), so a run
    killed on one machine resumes on another and downstream assets fetch the final checkpoint.
    """

    url: str
    """Where published artifacts live, e.g. s3://bucket/lmpipe."""
    home: str
    """Local project home: staging, the download cache, training runs, reports."""

    @property
    def _local(self) -> LocalArtifactStore:
        return LocalArtifactStore(home=self.home)

    def _fs(self):
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url)
        return fs, root.rstrip("/")

    def stage(self, asset: str) -> contextlib.AbstractContextManager[Path]:
        return self._local.stage(asset)

    def publish(self, staging: Path, asset: str) -> tuple[str, str]:
        location, digest = self._local.publish(staging, asset)
        final = Path(location)
        fs, root = self._fs()
        remote = f"{root}/{asset}/{final.name}"
        if not fs.exists(f"{remote}/manifest.json"):
            files = sorted(p for p in final.rglob("*") if p.is_file() and p.name != "manifest.json")
            for path in [*files, final / "manifest.json"]:  # manifest last
                target = f"{remote}/{path.relative_to(final).as_posix()}"
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)  # a no-op on object stores
                fs.put_file(str(path), target)
        return f"{self.url.rstrip('/')}/{asset}/{final.name}", digest

    def local_path(self, location: str) -> Path:
        from lmcore.io import sha256_file

        asset, version = location.rstrip("/").split("/")[-2:]
        local = self._local.root / asset / version
        if local.is_dir():
            return local
        fs, root = self._fs()
        remote = f"{root}/{asset}/{version}"
        if not fs.exists(f"{remote}/manifest.json"):
            raise FileNotFoundError(f"{location}: no manifest; the upload was incomplete, re-materialize the asset")
        with staging_dir(self._local.root / asset) as tmp:
            fs.get(remote, str(tmp / "v"), recursive=True)
            if not sha256_file(tmp / "v" / "manifest.json").startswith(version):
                raise ValueError(f"{location}: manifest digest does not match the version name; the copy is corrupt")
            (tmp / "v").rename(local)
        return local

    def write_ref(self, asset: str, ref: dict[str, str]) -> None:
        fs, root = self._fs()
        fs.makedirs(f"{root}/{asset}", exist_ok=True)
        fs.pipe_file(f"{root}/{asset}/{REF_FILE}", json.dumps(ref, sort_keys=True).encode())  # one PUT

    def read_ref(self, asset: str) -> dict[str, str]:
        fs, root = self._fs()
        where = f"{self.url.rstrip('/')}/{asset}/{REF_FILE}"
        try:
            data = fs.cat_file(f"{root}/{asset}/{REF_FILE}")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{where}: {asset} was never materialized in this store; materialize it first"
            ) from None
        return parse_ref(data, where)

    def cache_dir(self) -> Path:
        return self._local.cache_dir()

    def run_dir(self, asset: str) -> Path:
        return self._local.run_dir(asset)

    def run_mirror(self, asset: str) -> str:
        return f"{self.url.rstrip('/')}/{asset}/runs"

    def fetch_checkpoint(self, location: str) -> Path:
        """The checkpoint at a mirror URL, pulled once into ``cache/checkpoints/<run_key>/`` and verified."""
        if "://" not in location:
            return super().fetch_checkpoint(location)
        base, run_key, step_name = location.rstrip("/").rsplit("/", 2)
        local = self.cache_dir() / "checkpoints" / run_key
        step = int(step_name.removeprefix("step-"))
        path = checkpoint_dir(local, step)
        if not path.is_dir() or verify_checkpoint(path):
            CheckpointMirror(base, run_key).pull(step, local)
        return path

    def reports_dir(self) -> Path:
        return self._local.reports_dir()
