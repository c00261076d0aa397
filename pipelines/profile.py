"""Run profiles: named YAML files of per-asset config, validated before any run starts.

A profile maps asset names to the fields of that asset's ``dg.Config`` (nested sub-configs
as nested mappings). ``lmpipe run --set ASSET.FIELD=VALUE`` overrides one (dotted) field on
top of it (``apply_overrides``). Relative local paths (corpus sources, SFT records, label
files) are resolved against the project root for the packaged profiles, against the file's
own directory for ``--config FILE``, and against the working directory for ``--set``.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic
import yaml
from dagster._utils.schedules import is_valid_cron_string

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
    """When Dagster's automation sensor reruns the pipeline by itself (``pipelines.automation``); off unless the
    profile turns it on."""

    on_corpus_change: bool = False
    """Retrain when the corpus source's version (content digest, ETag, ...) changes."""
    observe_minutes: int = 5
    """How often the corpus source is observed for a change, in minutes (1 to 59)."""
    on_schedule: bool = False
    """Retrain on ``cron``."""
    cron: str = DEFAULT_CRON

    def __post_init__(self) -> None:
        if not 1 <= self.observe_minutes <= 59:
            raise ValueError(f"automation.observe_minutes={self.observe_minutes}: must be 1 to 59 minutes")
        if not is_valid_cron_string(self.cron):
            raise ValueError(f"automation.cron={self.cron!r} is not a cron expression (e.g. {DEFAULT_CRON!r})")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    assets: dict[str, dict[str, Any]]
    automation: Automation = Automation()
    overrides: tuple[str, ...] = ()
    """The ``--set ASSET.FIELD=VALUE`` strings applied on top of the file, as given."""

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


def _resolve_paths(value: Any, base: Path) -> Any:
    """A path field's value (one spec or a list of them) with relative local paths made absolute."""
    if isinstance(value, list):
        return [_resolve_paths(v, base) for v in value]
    if isinstance(value, dict) and isinstance(value.get("spec"), str):  # a source with a mixing weight
        return {**value, "spec": _resolve_source(value["spec"], base)}
    if isinstance(value, str) and value:
        return _resolve_source(value, base)
    return value


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
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("assets") or {}, dict):
        raise ValueError(f"{path}: expected a mapping with an 'assets:' mapping of asset name -> config fields")
    assets_data = data.get("assets") or {}
    if bad := [f"assets.{k}" for k, v in assets_data.items() if v is not None and not isinstance(v, dict)]:
        kinds = "; ".join(f"{b}: expected a mapping of field: value, got a {_kind(assets_data[b[7:]])}" for b in bad)
        raise ValueError(f"{path}: {kinds} (write each asset's config as a mapping, e.g. `splits: {{seed: 1}}`)")
    assets = {k: dict(v or {}) for k, v in assets_data.items()}
    for asset, field in _PATH_FIELDS:
        if field in assets.get(asset, {}):
            assets[asset][field] = _resolve_paths(assets[asset][field], base)
    auto = data.get("automation") or {}
    fields = [f.name for f in dataclasses.fields(Automation)]
    if unknown := sorted(set(auto) - set(fields)):
        raise ValueError(f"{path}: automation.{unknown[0]}: unknown field; valid: {', '.join(fields)}")
    return Profile(
        name=name or path.stem,
        description=str(data.get("description", "")).strip(),
        assets=assets,
        automation=_automation(path, auto),
    )


def _automation(path: Path, values: dict[str, Any]) -> Automation:
    try:
        return Automation(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; ValueError naming the file, line and column of a syntax error."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None:
            context += f" that starts at line {context_mark.line + 1}"
        raise ValueError(
            f"{where}: not valid YAML ({problem}{f', {context}' if context else ''}); fix the syntax there "
            "(an unclosed bracket or quote is often reported on a later line)"
        ) from None


def _kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def config_classes(assets_defs: list[dg.AssetsDefinition]) -> dict[str, type[dg.Config]]:
    """Asset name -> the ``dg.Config`` class its function takes as ``config``."""
    out = {}
    for a in assets_defs:
        hints = typing.get_type_hints(a.op.compute_fn.decorated_fn)
        if isinstance(hints.get("config"), type) and issubclass(hints["config"], dg.Config):
            out[a.key.to_user_string()] = hints["config"]
    return out


_SET_USAGE = "expected ASSET.FIELD=VALUE, e.g. --set tokenizer.vocab_size=280 or --set pretrained_model.train.lr=0.002"


def apply_overrides(profile: Profile, sets: list[str], base: Path | None = None) -> Profile:
    """A new ``profile`` with each ``ASSET.FIELD=VALUE`` applied in order, so a later one of the same path wins.

    FIELD may be a dotted path into nested sub-configs; missing intermediate mappings are created.
    VALUE is parsed as YAML (``0.002``, ``true``, ``[a, b]``, ``null``, text). Relative local paths in
    path fields resolve against ``base`` (default: the working directory, as for a path typed on the
    command line). Raises one ValueError listing every malformed override; ``validate_profile``
    then checks the result like the file's own fields, naming the ``--set`` each problem came from.
    """
    base = Path.cwd() if base is None else base
    assets = copy.deepcopy(profile.assets)
    problems = []
    for spec in sets:
        try:
            path, value = _parse_override(spec)
            if tuple(path) in _PATH_FIELDS:
                value = _resolve_paths(value, base)
            _set_in(assets, path, value, spec)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("--set is invalid:\n  " + "\n  ".join(problems))
    return dataclasses.replace(profile, assets=assets, overrides=(*profile.overrides, *sets))


def _override_path(spec: str) -> list[str]:
    return [name.strip() for name in spec.split("=", 1)[0].split(".")]


def _parse_override(spec: str) -> tuple[list[str], Any]:
    """``asset.field[.sub...]=value`` -> (path, YAML value); ValueError saying what is malformed."""
    if "=" not in spec:
        raise ValueError(f"--set {spec!r}: no '='; {_SET_USAGE}")
    key, raw = spec.split("=", 1)
    path = _override_path(spec)
    if len(path) < 2:
        raise ValueError(f"--set {spec!r}: {key!r} names no field of an asset (no '.'); {_SET_USAGE}")
    if not all(path):
        raise ValueError(f"--set {spec!r}: empty asset or field name in {key!r}; {_SET_USAGE}")
    try:
        return path, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        raise ValueError(
            f"assets.{'.'.join(path)}: value {raw!r} from --set {spec!r} is not valid YAML ({problem}); "
            f"quote text that is meant literally, e.g. --set '{key}=\"{raw}\"'"
        ) from None


def _set_in(assets: dict[str, Any], path: list[str], value: Any, spec: str) -> None:
    node = assets
    for depth, name in enumerate(path[:-1]):
        if node.get(name) is None:
            node[name] = {}
        elif not isinstance(node[name], dict):
            where = ".".join(path[: depth + 1])
            raise ValueError(
                f"assets.{where}: is {node[name]!r}, not a mapping, so --set {spec!r} cannot set a field inside it; "
                f"set assets.{where} itself or fix the path"
            )
        node = node[name]
    node[path[-1]] = value


def _config_class(annotation: Any) -> type[dg.Config] | None:
    """The ``dg.Config`` class a field holds: the annotation itself, or the one such member of a union."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[X], X | None
        members = [c for a in typing.get_args(annotation) if (c := _config_class(a)) is not None]
        return members[0] if len(members) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, dg.Config):
        return annotation
    return None


def _unknown_fields(cls: type[dg.Config], values: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """(path, problem) for every key of ``values``, at any depth of nested sub-configs, that ``cls`` lacks.

    pydantic ignores unknown keys inside a nested config, so a typo there would otherwise be dropped silently.
    """
    fields = cls.model_fields
    valid = f"unknown field; valid fields: {', '.join(sorted(fields))}"
    out = [(f"{where}.{name}", valid) for name in sorted(set(values) - set(fields))]
    for name, value in values.items():
        sub = _config_class(fields[name].annotation) if name in fields else None
        if sub is not None and isinstance(value, dict):
            out += _unknown_fields(sub, value, f"{where}.{name}")
    return out


def _origin(path: str, problem: str, overrides: tuple[str, ...]) -> str:
    """`` (from --set ...)`` naming the overrides in effect that set ``path``, or a value inside or above it.

    Of several (an asset-level error from ``to_lmcore`` is above all of that asset's), those whose field
    the message names, when it names any.
    """
    hits = {}
    for spec in overrides:  # a later override of the same path replaces an earlier one
        key = "assets." + ".".join(_override_path(spec))
        if key == path or key.startswith(path + ".") or path.startswith(key + "."):
            hits[key] = spec
    named = [s for k, s in hits.items() if re.search(rf"\b{re.escape(k.rsplit('.', 1)[-1])}\b", problem)]
    specs = named or list(hits.values())
    return f" (from --set {', --set '.join(specs)})" if specs else ""


def validate_profile(profile: Profile, assets_defs: list[dg.AssetsDefinition]) -> None:
    """Build every asset's config as a run would, collecting all problems into one ValueError."""
    classes = config_classes(assets_defs)
    problems: list[tuple[str, str]] = []
    for asset, values in profile.assets.items():
        if asset not in classes:
            choices = ", ".join(sorted(classes))
            problems.append((f"assets.{asset}", f"no such configurable asset; choose from {choices}"))
            continue
        problems += _unknown_fields(classes[asset], values, f"assets.{asset}")
        try:
            cfg = classes[asset](**values)
            if hasattr(cfg, "to_lmcore"):
                cfg.to_lmcore()
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                problems.append((f"assets.{asset}.{field}", f"{err['msg']} (got {err.get('input')!r})"))
        except ValueError as exc:
            problems.append((f"assets.{asset}", str(exc)))
    if problems:
        lines = [f"{path}: {problem}{_origin(path, problem, profile.overrides)}" for path, problem in problems]
        what = f"profile {profile.name!r}" + (" with its --set overrides" if profile.overrides else "")
        raise ValueError(f"{what} is invalid:\n  " + "\n  ".join(lines))
