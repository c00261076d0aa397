"""The profile as part of the definitions: each asset's config defaults are the profile's values.

Dagster derives an asset's config schema from the ``dg.Config`` class its function takes (generated from the
lmcore dataclasses by ``assets.config``). Here that schema is rebuilt with the profile's values as the defaults
of the fields the profile sets, at any depth, so every launch path (Materialize, a backfill, the Launchpad, an
automation tick, ``dg launch``, ``lmpipe run``) runs the same config without being handed any. Nothing is copied:
the fields, types and docs are Dagster's own schema of the generated class; only defaults change.

The resolved config is also part of what Dagster versions: an asset's code version is its module's
(``assets.versions``) plus a digest of its resolved config, so a profile edit makes the asset (and what is
downstream of it) stale in the UI exactly as a code edit does. The digest is recorded in the asset's definition
metadata (``lmpipe/config_sha256``), which the IO manager compares with what built the artifact it hands on.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster._config import ConfigTypeKind, Permissive, Shape, process_config, validate_config

from assets.io_manager import CONFIG_SHA_KEY, PROFILE_KEY, config_digest

_SHAPES = (ConfigTypeKind.STRICT_SHAPE, ConfigTypeKind.PERMISSIVE_SHAPE)
_SEP = "-"
"""Between the module closure's digest and the config's in a code version."""


def with_profile(
    assets_defs: list[dg.AssetsDefinition], values: dict[str, dict[str, Any]], profile: str
) -> list[dg.AssetsDefinition]:
    """``assets_defs`` with ``values[asset]`` as each asset's config defaults, its config digest in its code version
    and metadata. Raises ValueError listing every value Dagster's config system would reject, by path."""
    problems: list[str] = []
    out = [_configured(a, values.get(a.key.to_user_string(), {}), profile, problems) for a in assets_defs]
    if problems:
        raise ValueError(f"profile {profile!r} is invalid:\n  " + "\n  ".join(problems))
    return out


def _configured(
    asset: dg.AssetsDefinition, values: dict[str, Any], profile: str, problems: list[str]
) -> dg.AssetsDefinition:
    name = asset.key.to_user_string()
    op = asset.op
    if op.config_schema is None or op.config_schema.as_field().config_type.kind not in _SHAPES:
        digest = config_digest({})
    else:
        field = _with_defaults(op.config_schema.as_field(), values, f"assets.{name}", problems)
        resolved = process_config(field.config_type, {})
        if not resolved.success:  # a required field the profile does not set
            problems += [f"assets.{name}: {e.message}" for e in resolved.errors]
            return asset
        digest = config_digest(resolved.value)
        op = op.with_replaced_properties(name=op.name, config_schema=field)
    attributes = {**asset.get_attributes_dict(), "node_def": op}
    configured = dg.AssetsDefinition.dagster_internal_init(**attributes)  # the same asset, with the new op schema

    def stamp(spec: dg.AssetSpec) -> dg.AssetSpec:
        version = f"{spec.code_version}{_SEP}{digest[:8]}" if spec.code_version else digest[:12]
        metadata = {**spec.metadata, CONFIG_SHA_KEY: digest, PROFILE_KEY: profile}
        return spec.replace_attributes(code_version=version, metadata=metadata)

    return configured.map_asset_specs(stamp)


def changed_parts(recorded: str, current: str) -> list[str]:
    """Which parts of a code version (``<module closure digest>-<config digest>``, as stamped here) differ between a
    recorded one and the current one: ``code``, ``config``, both or neither."""
    pairs = zip(("code", "config"), recorded.split(_SEP), current.split(_SEP), strict=False)
    return [what for what, a, b in pairs if a != b]


def _with_defaults(field: dg.Field, value: Any, path: str, problems: list[str]) -> dg.Field:
    """``field`` with ``value`` as its default: a mapping sets the defaults of a shape's own fields (so a run config
    that sets one of them keeps the profile's others); anything else is the field's whole default, if valid."""
    kind = field.config_type.kind
    if kind in _SHAPES and isinstance(value, dict):
        shape = field.config_type
        if unknown := sorted(set(value) - set(shape.fields)):
            problems.append(f"{path}.{unknown[0]}: unknown field; valid fields: {', '.join(sorted(shape.fields))}")
        fields = {
            k: _with_defaults(f, value[k], f"{path}.{k}", problems) if k in value else f
            for k, f in shape.fields.items()
        }
        shape_cls = Permissive if kind == ConfigTypeKind.PERMISSIVE_SHAPE else Shape
        return dg.Field(shape_cls(fields, description=shape.description), description=field.description)
    checked = validate_config(field.config_type, value)
    if not checked.success:
        problems += [f"{path}: {e.message.replace(' at the root', '')}" for e in checked.errors]
        return field
    resolved = process_config(field.config_type, value).value  # a nested shape's unset fields filled in
    return dg.Field(field.config_type, default_value=resolved, is_required=False, description=field.description)
