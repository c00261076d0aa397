"""Resources: where artifacts live. An interface with a local implementation.

``ArtifactStore`` hands out staging directories and publishes finished ones under a
content-addressed name, so a failed or concurrent run never touches a published
version. ``LocalArtifactStore`` is the default (``$LMPIPE_HOME/artifacts``).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from lmcore.io import publish_dir, staging_dir


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
    def cache_dir(self) -> Path:
        """Directory for download caches."""

    @abstractmethod
    def run_dir(self, asset: str, key: str) -> Path:
        """A stable working directory for a long job (training): the same key resumes the same run."""

    @abstractmethod
    def reports_dir(self) -> Path:
        """Where human-readable reports (JSON, Markdown) are written."""


class LocalArtifactStore(ArtifactStore):
    """Artifacts under the project home: ``{home}/artifacts/{asset}/{digest[:16]}/``."""

    home: str
    """The project home ($LMPIPE_HOME); read when a run starts, not when code loads."""

    @property
    def root(self) -> Path:
        return Path(self.home) / "artifacts"

    @contextlib.contextmanager
    def stage(self, asset: str) -> Iterator[Path]:
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

    def cache_dir(self) -> Path:
        return Path(self.home) / "cache"

    def run_dir(self, asset: str, key: str) -> Path:
        return self.root / asset / "runs" / key

    def reports_dir(self) -> Path:
        return Path(self.home) / "reports"
