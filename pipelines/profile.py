"""Run profiles: named YAML files of per-asset config, validated before any run starts.

A profile maps asset names to the fields of that asset's ``dg.Config``. Relative local
paths (corpus sources, SFT records, label files) are resolved against the project root for
the packaged profiles and against the file's own directory for ``--config FILE``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic
import yaml

from pipelines.home import PROJECT_ROOT

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
_PATH_FIELDS = (
    ("raw_corpus", "sources"),
    ("sft_dataset", "records"),
    ("labeled_data", "train"),
    ("labeled_data", "validation"),
    ("labeled_data", "test"),
)
"""Config fields holding local paths, resolved like raw_corpus.sources."""


DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00


@dataclass(frozen=True)
class Automation:
    """Retraining triggers of a profile; both off unless the profile (or the UI) turns them on."""

    sensor: bool = False
    """Retrain when the corpus source's version (content digest, ETag, ...) changes."""
    schedule: bool = False
    """Retrain on ``cron``."""
    cron: str = DEFAULT_CRON
    sensor_interval_s: int = 300


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    assets: dict[str, dict[str, Any]]
    automation: Automation = Automation()

    @property
    def sources(self) -> list[str]:
        return list(self.assets.get("raw_corpus", {}).get("sources", ["builtin:python-docs"]))

    def run_config(self, selected: set[str] | None = None) -> dict[str, Any]:
        """Dagster run config for the selected asset names (all when None)."""
        ops = {k: {"config": v} for k, v in self.assets.items() if selected is None or k in selected}
        return {"ops": ops}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _resolve_source(spec: str, base: Path) -> str:
    if ":" in spec.split("/", 1)[0] or Path(spec).is_absolute():  # URL, builtin:, hf:, or absolute
        return spec
    return str((base / spec).resolve())


def load_profile(name: str | None = None, config_file: str | Path | None = None) -> Profile:
    """Load a packaged profile by name, or a YAML file; raises ValueError naming what is wrong."""
    if config_file is not None:
        path, base = Path(config_file), Path(config_file).resolve().parent
        if not path.exists():
            raise FileNotFoundError(f"{path}: config file not found")
    else:
        name = name or "demo"
        path, base = PROFILES_DIR / f"{name}.yaml", PROJECT_ROOT
        if not path.exists():
            raise ValueError(f"unknown profile {name!r}; available: {', '.join(available_profiles())}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("assets", {}), dict):
        raise ValueError(f"{path}: expected a mapping with an 'assets:' mapping of asset name -> config fields")
    assets = {k: dict(v or {}) for k, v in data.get("assets", {}).items()}
    for asset, field in _PATH_FIELDS:
        value = assets.get(asset, {}).get(field)
        if isinstance(value, list):
            assets[asset][field] = [_resolve_source(v, base) for v in value]
        elif isinstance(value, str) and value:
            assets[asset][field] = _resolve_source(value, base)
    auto = data.get("automation") or {}
    unknown = sorted(set(auto) - {"sensor", "schedule", "cron", "sensor_interval_s"})
    if unknown:
        raise ValueError(
            f"{path}: automation.{unknown[0]}: unknown field; valid: sensor, schedule, cron, sensor_interval_s"
        )
    return Profile(
        name=name or path.stem,
        description=str(data.get("description", "")).strip(),
        assets=assets,
        automation=Automation(**auto),
    )


def config_classes(assets_defs: list[dg.AssetsDefinition]) -> dict[str, type[dg.Config]]:
    """Asset name -> the ``dg.Config`` class its function takes as ``config``."""
    out = {}
    for a in assets_defs:
        hints = typing.get_type_hints(a.op.compute_fn.decorated_fn)
        if isinstance(hints.get("config"), type) and issubclass(hints["config"], dg.Config):
            out[a.key.to_user_string()] = hints["config"]
    return out


def validate_profile(profile: Profile, assets_defs: list[dg.AssetsDefinition]) -> None:
    """Build every asset's config as a run would, collecting all problems into one ValueError."""
    classes = config_classes(assets_defs)
    problems = []
    for asset, values in profile.assets.items():
        if asset not in classes:
            problems.append(f"assets.{asset}: no such configurable asset; choose from {', '.join(sorted(classes))}")
            continue
        fields = classes[asset].model_fields
        for unknown in sorted(set(values) - set(fields)):
            problems.append(f"assets.{asset}.{unknown}: unknown field; valid fields: {', '.join(sorted(fields))}")
        try:
            cfg = classes[asset](**values)
            if hasattr(cfg, "to_lmcore"):
                cfg.to_lmcore()
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                problems.append(f"assets.{asset}.{field}: {err['msg']} (got {err.get('input')!r})")
        except ValueError as exc:
            problems.append(f"assets.{asset}: {exc}")
    if problems:
        raise ValueError(f"profile {profile.name!r} is invalid:\n  " + "\n  ".join(problems))
