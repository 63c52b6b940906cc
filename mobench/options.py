"""Typed, documented options that a method (or a shared trainer's budget) owns, with a preset per scale.

A method declares ``Options``, a frozen dataclass subclassing :class:`Options`; every field is made by
:func:`option` (a default and a one-line doc) or :func:`budget` (a nested :class:`Options`, such as the
DPO budget of the experts the method trains). ``PRESETS`` maps a scale to the fields that differ from the
defaults there (nested fields by their dotted path). The core builds a method's options as
``preset(scale)``, then the registration's fixed values, then the user's ``-o KEY=VALUE`` (converted to the
field's type; a key is a dotted path, or a bare field name that is unique in the tree). This is the pattern
of simonw/llm's ``Model.Options`` and tox 4's ``add_config``: the plugin that owns a setting declares it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Iterator, Literal, Mapping, TypeVar

from mobench.api import SCALES, MobenchError

O = TypeVar("O", bound="Options")


def option(default: Any, doc: str, **kwargs: Any) -> Any:
    """A documented option field: ``alpha: float = option(1.0, "guidance strength")``."""
    return field(default=default, metadata={"doc": doc}, **kwargs)


def budget(cls: type["Options"], doc: str) -> Any:
    """A nested options field (a shared trainer's budget), defaulting to ``cls()``."""
    return field(default_factory=cls, metadata={"doc": doc})


@dataclass(frozen=True)
class Options:
    """Base class of method options and trainer budgets (frozen dataclasses with documented fields)."""

    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def check(self) -> None:
        """Raise :class:`MobenchError` on values that are valid types but invalid settings (override)."""

    @classmethod
    def preset(cls: type[O], scale: str) -> O:
        """The options at ``scale``: each nested budget's own preset, then this class's ``PRESETS[scale]``."""
        if scale not in SCALES:
            raise MobenchError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
        hints = _hints(cls)
        nested = {f.name: hints[f.name].preset(scale) for f in fields(cls) if _is_options(hints[f.name])}
        out = cls(**nested)
        return out.replace(dict(cls.PRESETS.get(scale, {})))

    def replace(self: O, values: Mapping[str, Any], parse: bool = False, owner: str = "options") -> O:
        """A copy with ``values`` set (dotted or unique bare keys); ``parse``: values are text from the command line."""
        out = self
        for key, value in values.items():
            path = self.resolve(key, owner)
            out = _set(out, path, value, parse, owner)
        out.check_all()
        return out

    def check_all(self) -> None:
        """``check()`` on this object and every nested budget."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Options):
                value.check_all()
        self.check()

    @classmethod
    def keys(cls) -> list[str]:
        """Every leaf option as a dotted path, in declaration order."""
        hints = _hints(cls)
        out: list[str] = []
        for f in fields(cls):
            if _is_options(hints[f.name]):
                out.extend(f"{f.name}.{k}" for k in hints[f.name].keys())
            else:
                out.append(f.name)
        return out

    @classmethod
    def resolve(cls, key: str, owner: str = "options") -> str:
        """The dotted path a user's key names: itself, or the one leaf whose last part it is; else one clear error."""
        key = str(key).strip()
        known = cls.keys()
        if key in known:
            return key
        matches = [k for k in known if k.rsplit(".", 1)[-1] == key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise MobenchError(f"{owner} option {key!r} is ambiguous; say which: {', '.join(matches)}")
        names = sorted(set(known) | {k.rsplit('.', 1)[-1] for k in known})
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
        if close:
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?"
        else:  # nothing close: name what there is, groups folded (a nested budget as `experts.*`)
            groups = list(dict.fromkeys(k if "." not in k else k.split(".", 1)[0] + ".*" for k in known))
            hint = f"; its options are {', '.join(groups)}" if groups else "; it has none"
        shown = key if len(key) <= 60 else key[:57] + "..."
        raise MobenchError(f"{owner} has no option {shown!r}{hint} (see `mobench options {owner}`)")

    def get(self, path: str) -> Any:
        """The value at a dotted path."""
        value: Any = self
        for part in path.split("."):
            value = getattr(value, part)
        return value

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready nested dict (tuples as lists), for manifests, run ids and artifact keys."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def describe(cls, scale: str) -> list[dict[str, Any]]:
        """One row per leaf option: key, type, value at ``scale``, default, doc."""
        at_scale, plain = cls.preset(scale), cls()
        rows = []
        for key, f, owner_cls in _leaf_fields(cls):
            rows.append({
                "key": key,
                "type": _type_name(_hints(owner_cls)[f.name]),
                "value": at_scale.get(key),
                "default": plain.get(key),
                "doc": f.metadata.get("doc", ""),
            })
        return rows


@dataclass(frozen=True)
class NoOptions(Options):
    """The options of a method that declares none."""


def options_class(factory: Any) -> type[Options] | None:
    """The Options class a method factory declares (its ``Options`` attribute), or None."""
    cls = getattr(factory, "Options", None)
    return cls if isinstance(cls, type) and issubclass(cls, Options) else None


# -- internals ----------------------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _is_options(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Options)


def _leaf_fields(cls: type[Options], prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, type]]:
    hints = _hints(cls)
    for f in fields(cls):
        if _is_options(hints[f.name]):
            yield from _leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, cls


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"tuple[{_type_name(typing.get_args(tp)[0])}, ...]"
    return getattr(tp, "__name__", str(tp))


def _set(obj: Options, path: str, value: Any, parse: bool, owner: str) -> Options:
    head, _, rest = path.partition(".")
    if rest:
        return dataclasses.replace(obj, **{head: _set(getattr(obj, head), rest, value, parse, owner)})
    tp = _hints(type(obj))[head]
    return dataclasses.replace(obj, **{head: convert(tp, value, f"{owner} option {head!r}", parse)})


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def convert(tp: Any, value: Any, what: str, parse: bool = True) -> Any:
    """``value`` as type ``tp`` (int, float, bool, str, Literal, tuple[X, ...], X | None); else one clear error."""
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (parse and isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return convert(args[0], value, what, parse)
    if origin is Literal:
        choices = typing.get_args(tp)
        for c in choices:
            if value == c or (isinstance(value, str) and str(c) == value.strip()):
                return c
        raise MobenchError(f"{what} must be one of {', '.join(map(str, choices))}, not {shown}")
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError:
                    raise MobenchError(f"{what} must be a list like 1.5,2 or [1.5, 2], not {shown}") from None
            else:
                value = [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise MobenchError(f"{what} must be a list like 1.5,2, not {shown}")
        return tuple(convert(item, v, what, parse) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise MobenchError(f"{what} must be true or false, not {shown}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise MobenchError(f"{what} must be a number, not {shown}")
        try:
            number = float(value) if tp is float else _as_int(value)
        except (TypeError, ValueError):
            raise MobenchError(f"{what} must be {'an integer' if tp is int else 'a number'}, not {shown}") from None
        if tp is float and not math.isfinite(number):
            raise MobenchError(f"{what} must be finite, not {shown}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise MobenchError(f"{what} must be text, not {shown}")
        return value
    if is_dataclass(tp):
        raise MobenchError(f"{what} is a group of options; set its fields with a dotted key")
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    number = float(text)
    if not number.is_integer():
        raise ValueError(text)
    return int(number)
