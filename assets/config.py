"""Dagster config generated from lmcore's dataclasses: each setting is declared once, in lmcore.

``config_from(TrainConfig)`` is a ``dg.Config`` class whose fields are the dataclass's
fields, with its defaults, and with its per-field docstrings (or trailing comments) as the
descriptions the Dagster UI shows. ``.to_lmcore()`` builds the dataclass from every field,
so nothing is dropped on the way and the dataclass's ``__post_init__`` validates it. An
asset's config nests these classes (``train: TrainSettings``); it never copies their fields.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, ClassVar

import dagster as dg
import pydantic

from lmcore.eval.rnn import RnnConfig
from lmcore.model.gpt import ModelConfig
from lmcore.model.lora import LoraConfig
from lmcore.train.config import TrainConfig, WarmStartConfig
from lmcore.train.launch import LaunchConfig


class LmcoreConfig(dg.Config):
    """Base of the generated classes: knows its dataclass and converts to it."""

    lmcore_class: ClassVar[type]

    def to_lmcore(self, **extra: Any) -> Any:
        """The lmcore dataclass from every field (lists back to tuples where the dataclass wants a tuple)."""
        values: dict[str, Any] = {}
        hints = typing.get_type_hints(self.lmcore_class)
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, LmcoreConfig):
                value = value.to_lmcore()
            elif _is_tuple(hints[name]) and value is not None:
                value = tuple(value)
            values[name] = value
        return self.lmcore_class(**values, **extra)

    def overrides(self) -> dict[str, Any]:
        """The fields set to something other than None (for ``all_optional`` classes: the overrides of a preset)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


def _is_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple


def _dagster_type(hint: Any) -> Any:
    """Dagster config has lists, not tuples; a nested dataclass is its generated class; ``X | None`` stays optional."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return config_from(hint)
    if origin is tuple:
        return list[args[0]]
    if origin in (typing.Union, types.UnionType):
        inner = [_dagster_type(a) for a in args if a is not type(None)]
        return typing.Optional[inner[0]] if len(inner) == 1 else hint  # noqa: UP045 (pydantic wants Optional)
    return hint


def _dagster_value(value: Any) -> Any:
    """A dataclass default as config: tuples as lists, dataclass instances as their generated config."""
    if dataclasses.is_dataclass(value):
        nested = config_from(type(value))
        return nested(**{f: _dagster_value(getattr(value, f)) for f in nested.model_fields})
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Per-field documentation: the string after a field (PEP 257 attribute docstring) or its trailing comment."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, [*body[1:], None], strict=True):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        name = node.target.id
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[name] = inspect.cleandoc(after.value.value)
        elif "#" in (line := lines[node.lineno - 1]):
            docs[name] = line.split("#", 1)[1].strip()
    return docs


@functools.cache
def config_from(
    cls: type, *, name: str | None = None, exclude: tuple[str, ...] = (), all_optional: bool = False
) -> type[LmcoreConfig]:
    """A ``dg.Config`` class with the fields of dataclass ``cls`` (minus ``exclude``), its defaults and docs.

    Named ``name`` or ``cls``'s name with Config replaced by Settings; cached, so a dataclass nested in
    another (ClassifyConfig.label_lm: TrainConfig) gets the same class as on its own.
    ``all_optional``: every field defaults to None ("keep the preset's value"), for overrides of a preset.
    Raises ValueError naming any ``exclude`` entry that is not a field of ``cls``.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    if unknown := sorted(set(exclude) - set(names)):
        raise ValueError(f"{cls.__name__} has no fields {unknown}; its fields are {names}")
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        hint = _dagster_type(hints[f.name])
        if all_optional:
            hint, default = typing.Optional[hint], None  # noqa: UP045
        elif f.default is not dataclasses.MISSING:
            default = _dagster_value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _dagster_value(f.default_factory())
        else:
            default = ...
        fields[f.name] = (hint, pydantic.Field(default=default, description=docs.get(f.name)))
    model = pydantic.create_model(
        name or cls.__name__.replace("Config", "Settings"), __base__=LmcoreConfig, __doc__=inspect.getdoc(cls), **fields
    )
    model.lmcore_class = cls
    return model


TrainSettings = config_from(TrainConfig)
"""Every field of :class:`lmcore.train.config.TrainConfig`, for every training asset."""
LoraSettings = config_from(LoraConfig)
ModelOverrides = config_from(ModelConfig, name="ModelOverrides", exclude=("vocab_size",), all_optional=True)
"""Fields of :class:`lmcore.model.gpt.ModelConfig` that replace the preset's (None: the preset's value)."""
RnnSettings = config_from(RnnConfig)
"""Every field of :class:`lmcore.eval.rnn.RnnConfig`: the RNN baseline of ``perplexity_report``."""
WarmStartSettings = config_from(WarmStartConfig)
"""Every field of :class:`lmcore.train.config.WarmStartConfig`: start pretraining from scratch or the last model."""
LaunchSettings = config_from(LaunchConfig)
"""Every field of :class:`lmcore.train.launch.LaunchConfig`: a training asset's processes and machines."""
