"""Settings declared once.

Every setting of a run is one field of a frozen dataclass, declared with :func:`setting`: its
default, its help text, the check its value must pass, and whether a resumed run may change it.
Everything else derives from that one declaration:

- the command-line flag (``lr_d`` -> ``--lr-d``) with its type, choices and ``--help`` line
  (:meth:`Settings.add_flags`, :meth:`Settings.from_flags`);
- the check and its one-sentence message naming the flag (:meth:`Settings.validate`);
- what a resumed run may change, and the conflicts it may not (:meth:`Settings.conflicts`);
- the JSON saved beside a checkpoint and read back (:meth:`Settings.to_dict`,
  :meth:`Settings.from_dict`).

A new hyper-parameter is one field::

    @dataclasses.dataclass(frozen=True)
    class GANConfig(TrainConfig):
        lr_d: float = setting(2e-4, "Adam learning rate of D", POSITIVE)

A subclass that needs another default says only that (:func:`inherited`).

Float settings must be finite whatever their check: ``--lr-d inf`` is refused like ``--lr-d 0``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from typing import Any, Callable, Optional, Sequence, TypeVar

from jaxgen.errors import JaxgenError


@dataclasses.dataclass(frozen=True)
class Check:
    """A condition on a value, and how the error message describes what is wanted."""

    test: Callable[[Any], bool]
    wanted: str  # completes "--flag must be ..."


POSITIVE_INT = Check(lambda v: v >= 1, "a positive integer")
NON_NEGATIVE_INT = Check(lambda v: v >= 0, "an integer >= 0")
POSITIVE = Check(lambda v: v > 0, "positive")
NON_NEGATIVE = Check(lambda v: v >= 0, "a finite number >= 0")
UNIT_INTERVAL = Check(lambda v: 0 <= v < 1, "in [0, 1)")
# jax.random.PRNGKey takes a seed that fits 32 bits without loss on every backend.
SEED = Check(lambda v: 0 <= v < 2 ** 32, f"an integer in 0..{2 ** 32 - 1}")
POSITIVE_INTS = Check(lambda v: len(v) > 0 and all(isinstance(w, int) and w >= 1 for w in v),
                      "positive integers such as 400,400")
DISTINCT_NON_NEGATIVE = Check(lambda v: len(v) > 0 and len(set(v)) == len(v)
                              and all(w >= 0 for w in v),
                              "distinct finite numbers >= 0 such as 1,0")


_NOTHING = object()


def setting(default: Any, help: str, check: Optional[Check] = None, *,
            choices: Optional[Sequence[str]] = None, resumable: bool = False,
            metavar: Optional[str] = None, parse: Optional[Callable[[str], Any]] = None,
            absent: Any = _NOTHING, required: bool = False) -> Any:
    """A dataclass field that is also a flag: ``help`` for ``--help``; ``check`` (or
    ``choices``) for the validation; ``resumable``: a resumed run may change it; ``parse``: the
    flag's own text-to-value function, where the field's type does not say it; ``absent``, for a
    setting added after runs were saved: the value those runs had, read where a saved config
    lacks the setting (so they restore and resume as what they were); ``required``: a flag the
    command line must give (a script's option, such as a workdir to read)."""
    metadata = {"help": help, "check": check, "choices": tuple(choices) if choices else None,
                "resumable": resumable, "metavar": metavar, "parse": parse,
                "required": required}
    if absent is not _NOTHING:
        metadata["absent"] = absent
    return dataclasses.field(default=default, metadata=metadata)


def inherited(base: type, name: str, default: Any) -> Any:
    """The setting ``name`` as ``base`` declares it (help, check, choices), with another
    default: a subclass's ``name: str = inherited(Base, "name", value)`` changes the default
    without declaring the setting a second time."""
    declared = base.__dataclass_fields__[name]
    return dataclasses.field(default=default, metadata=declared.metadata)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


S = TypeVar("S", bound="Settings")


def _base_type(hint) -> tuple[Any, bool]:
    """(the value type, whether None is allowed) of a field's annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return _base_type(args[0])[0], True
    if typing.get_origin(hint) is tuple:
        return tuple, False
    return hint, False


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every declared group of settings (configs saved with checkpoints, and the
    scripts' other options)."""

    def __post_init__(self):
        for f in dataclasses.fields(self):  # JSON and argparse give lists back for tuples
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))

    # ------------------------------------------------------------- declaration
    @classmethod
    def declared(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if "help" in f.metadata]

    @classmethod
    def _types(cls) -> dict:
        return typing.get_type_hints(cls)

    # ------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raises a JaxgenError naming the flag of the first value that fails its check."""
        types = self._types()
        for f in self.declared():
            value = getattr(self, f.name)
            kind, optional = _base_type(types[f.name])
            if value is None and optional:
                continue
            problem = _problem(value, kind, f.metadata)
            if problem:
                raise JaxgenError(f"{flag_name(f.name)} must be {problem}, got "
                                  f"{_show(value)}.")

    def conflicts(self, saved: dict) -> list[str]:
        """What differs from ``saved`` (a checkpoint's config) among the settings a resumed
        run may not change, as "name=saved (this command: value)"."""
        current = json.loads(json.dumps(self.to_dict()))  # as JSON gives them back
        saved = self._with_absent(saved)
        resumable = {f.name for f in dataclasses.fields(self) if f.metadata.get("resumable")}
        return [f"{k}={saved.get(k)!r} (this command: {v!r})" for k, v in current.items()
                if k not in resumable and saved.get(k) != v]

    # ------------------------------------------------------------- files
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[S], values: dict) -> S:
        """The settings saved by ``to_dict``; a field this version does not know is an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise JaxgenError(f"config fields {', '.join(unknown)} are unknown to this version "
                              "of jaxgen")
        return cls(**cls._with_absent(values))

    @classmethod
    def _with_absent(cls, saved: dict) -> dict:
        """``saved`` with the ``absent`` value of each setting it lacks that declares one."""
        return {**{f.name: f.metadata["absent"] for f in cls.declared()
                   if "absent" in f.metadata and f.name not in saved}, **saved}

    # ------------------------------------------------------------- flags
    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser, title: Optional[str] = None,
                  exclude: Sequence[str] = (), defaults: Optional[dict] = None) -> None:
        """One flag per declared field (``--field-name``), the field's default as the flag's
        (``defaults``: field -> a script's own default instead, shown in the help as well); in
        an argument group ``title`` if given."""
        target = parser.add_argument_group(title) if title else parser
        declared, types = cls(), cls._types()
        unknown = set(defaults or ()) - ({f.name for f in cls.declared()} - set(exclude))
        if unknown:
            raise ValueError(f"defaults= names fields that are not flags of {cls.__name__} "
                             f"here: {sorted(unknown)}; declare them, or do not exclude them")
        for f in cls.declared():
            if f.name in exclude:
                continue
            kind, _ = _base_type(types[f.name])
            default = (defaults or {}).get(f.name, getattr(declared, f.name))
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            parse = f.metadata.get("parse")
            text = f.metadata["help"] + ("" if default is None or parse else
                                         f" (default: {shown})")
            kwargs = dict(default=default, metavar=f.metadata["metavar"],
                          help=text.replace("%", "%%"))
            if f.metadata.get("required"):
                kwargs["required"] = True
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
                kwargs.pop("metavar")
            elif kind is tuple:
                kwargs["type"] = parse or _comma_separated(typing.get_args(types[f.name])[0])
            else:
                kwargs["type"] = parse or _PARSERS.get(kind, kind)
                if f.metadata["choices"]:
                    kwargs["choices"] = f.metadata["choices"]
            target.add_argument(flag_name(f.name), **kwargs)

    @classmethod
    def from_flags(cls: type[S], args: argparse.Namespace, **overrides) -> S:
        """The settings from parsed flags (every declared field not in ``overrides`` has one)."""
        values = {f.name: getattr(args, f.name) for f in cls.declared()
                  if f.name not in overrides}
        return cls(**values, **overrides)


def _problem(value, kind, metadata: dict) -> Optional[str]:
    """What ``value`` should have been, or None if it is fine."""
    choices, check = metadata.get("choices"), metadata.get("check")
    if choices:
        return None if value in choices else "one of " + ", ".join(choices)
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        return check.wanted if check else "an integer"
    if kind is float:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            if not check:
                return "a finite number"
            return check.wanted if "finite" in check.wanted else f"finite and {check.wanted}"
    if kind is tuple and any(isinstance(w, float) and not math.isfinite(w) for w in value):
        return check.wanted if check else "finite numbers"
    if check and not check.test(value):
        return check.wanted
    return None


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _comma_separated(kind: type) -> Callable[[str], tuple]:
    """An argparse type for comma-separated lists of ``kind`` (int or float), e.g. ``400,400``."""
    noun, example = ("integers", "400,400") if kind is int else ("numbers", "1,0")

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {noun} such as {example}, got {text!r}") from None

    return parse


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


_PARSERS = {float: _parse_float}
