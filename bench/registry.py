"""Plug-in registries in the style of timm's ``_registry.py``.

Four registries hold everything the suite can cross in a grid: ``ATTACKS``, ``DEFENSES``,
``DATASETS`` and ``MODELS``. An attack or defense declares itself once, in a card
(:mod:`bench.card`), and is registered by a decorator that reads it::

    @DEFENSES.register
    class FineTuning(Defense):
        card = DefenseCard(name="fine_tuning", label="FineTuning", stage="repair", needs_reserve=True)

(``@DEFENSES.register("name")`` names it explicitly; a plug-in without a card gets one built from
its class attributes.) Entries are found again by name (``DEFENSES.get("fine_tuning")``), by
wildcard and card fields (``DEFENSES.list("fine*")``, ``DEFENSES.list(stage="train")``), or built
by a factory (``DEFENSES.create("fine_tuning", lr=0.02)``).

The registry checks what it is given, in the style of lm-evaluation-harness's registry:

* **kind**: an attack must subclass :class:`bench.attack.Attack`, a defense
  :class:`bench.defense.Defense`, a dataset :class:`bench.datasets.base.DatasetSource`, a model
  must be a ``torch.nn.Module`` class or a factory taking ``num_classes``;
* **names**: a name taken by another object is refused (:class:`NameCollisionError`); the same
  object, or the same definition executed again (a module imported twice), is accepted;
* **parameters**: unknown names are refused with suggestions, and each value must match the type
  annotation of its params dataclass field (:class:`ParamsError` names the plug-in, the
  parameter, the expected and the given type).

Third-party packages add entries without forking the suite, in two ways:

* an entry point in the group ``bench.<registry>`` (``bench.defenses``, ``bench.attacks``, ...)
  whose value is the plug-in object (``my_pkg.module:MyDefense``); the entry point's name is the
  registered name;
* a ``module:Object`` path wherever a name is accepted (command line, suite files, Python).
  **A suite file or command line that names a module imports it**, and importing runs the
  module's top-level code: name only modules you trust. The registry refuses, before importing,
  modules of the standard library and ``builtins`` (``subprocess:run``, ``os:system``,
  ``builtins:eval`` are never plug-ins), and after importing refuses any object that is not of
  the registry's kind, before it is ever called. Names read back from results (records, tidy
  tables) are looked up with :meth:`Registry.lookup`, which never imports anything.

Unknown names raise :class:`UnknownNameError` listing the close matches.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import fnmatch
import importlib
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, Callable, Iterable

from bench.card import AttackCard, CardError, DefenseCard, PluginCard


class UnknownNameError(KeyError):
    """A name that no registry entry, entry point or ``module:Object`` path resolves (``reason``
    says why a path was refused)."""

    def __init__(self, kind: str, name: str, known: Iterable[str], reason: str = ""):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        why = f": {reason}." if reason else "."
        msg = (f"unknown {kind} '{name}'{why}{hint} Known {kind}s: {', '.join(known) or '(none)'}. "
               f"A third-party plug-in can also be named as 'package.module:Object'.")
        super().__init__(msg)
        self.kind, self.name, self.close, self.reason = kind, name, close, reason

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ParamsError(ValueError):
    """Parameters given to a plug-in that its params dataclass does not accept."""


class NameCollisionError(ValueError):
    """A name already registered for a different object."""


class PluginKindError(TypeError):
    """An object that is not of a registry's kind (e.g. a defense that does not subclass Defense)."""


@dataclass
class Entry:
    """One registered plug-in: the object, its params dataclass and free-form metadata."""

    name: str
    obj: Any
    params_cls: type | None = None
    metadata: dict = field(default_factory=dict)
    source: str = "builtin"  # builtin | entry-point | path | prefix
    card: PluginCard | None = None  # attacks and defenses: the plug-in's card (label, tables, needs)

    def describe(self, key: str) -> Any:
        """A metadata value, or the card's field of that name (None when neither has it)."""
        if key in self.metadata:
            return self.metadata[key]
        return getattr(self.card, key, None)

    @property
    def doc(self) -> str:
        """The docstring's first sentence (its first paragraph, joined, cut at the first full stop
        that ends a sentence), for one-line listings."""
        text = (getattr(self.obj, "__doc__", None) or "").strip()
        para = " ".join(text.split("\n\n")[0].split())
        end = para.find(". ")
        return para[:end + 1] if end >= 0 else para

    def make_params(self, **overrides) -> Any:
        """Build the params dataclass: defaults, then a named preset (``preset="meca"``, from the
        plug-in's ``presets`` dict), then explicit overrides; unknown names fail clearly."""
        preset = overrides.pop("preset", None)
        if preset is not None:
            presets = getattr(self.obj, "presets", {}) or {}
            if preset not in presets:
                raise ParamsError(f"{self.name}: unknown preset '{preset}'. Known presets: "
                                  f"{', '.join(sorted(presets)) or '(none)'}")
            overrides = {**presets[preset], **overrides}
        if self.params_cls is None:
            if overrides:
                raise ParamsError(f"{self.name} takes no parameters, got {sorted(overrides)}")
            return None
        return build_params(self.params_cls, overrides, owner=self.name)


def build_params(params_cls: type, overrides: dict, owner: str = "") -> Any:
    """Instantiate ``params_cls`` from defaults plus ``overrides``; unknown keys and values of the
    wrong type (against the field's annotation) fail clearly, naming the parameter."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        close = {u: difflib.get_close_matches(u, list(fields), n=3) for u in unknown}
        hints = "; ".join(f"'{u}' (did you mean {', '.join(c)}?)" if c else f"'{u}'"
                          for u, c in close.items())
        raise ParamsError(f"{owner}: unknown parameter(s) {hints}. "
                          f"Accepted: {', '.join(sorted(fields))}")
    hints = _field_types(params_cls)
    for key, value in overrides.items():
        if key in hints and not value_matches(value, hints[key]):
            raise ParamsError(f"{owner}: parameter '{key}' expects {type_name(hints[key])}, "
                              f"got {type(value).__name__} {value!r}")
    try:
        params = params_cls(**overrides)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{owner}: bad parameters {overrides}: {exc}") from exc
    validate = getattr(params, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ParamsError(f"{owner}: {exc}") from exc
    return params


def _field_types(params_cls: type) -> dict[str, Any]:
    """The resolved annotation of each field; a field whose annotation does not resolve (a name
    local to a function, say) is left out and accepts any value."""
    try:
        return typing.get_type_hints(params_cls)
    except Exception:  # noqa: BLE001 - one unresolvable field: resolve the others one by one
        module = sys.modules.get(params_cls.__module__)
        names = dict(vars(module)) if module else {}
        out = {}
        for f in dataclasses.fields(params_cls):
            holder = types.SimpleNamespace(__annotations__={f.name: f.type})
            try:
                out[f.name] = typing.get_type_hints(holder, globalns=names)[f.name]
            except Exception:  # noqa: BLE001
                continue
        return out


_UNION_TYPES = (typing.Union, types.UnionType)
_SEQUENCES = (list, tuple, collections.abc.Sequence)


def value_matches(value: Any, hint: Any) -> bool:
    """Whether a parameter value (as a suite file or command line gives it) fits a type annotation.

    ``int`` takes integers, ``float`` integers and floats, ``bool`` only True/False (a bool is
    never taken for a number); ``tuple``/``list`` take either (TOML has only arrays), checking the
    items; ``Optional``/unions any member; ``Literal`` its values. An annotation it does not know
    (``Any``, a type variable) accepts anything."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNION_TYPES:
        return any(value_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(value_matches(v, a) for v, a in zip(value, args))
        return all(value_matches(v, args[0]) for v in value)
    if hint in (dict, collections.abc.Mapping) or origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return False
        if len(args) != 2:
            return True
        return all(value_matches(k, args[0]) and value_matches(v, args[1]) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def type_name(hint: Any) -> str:
    """An annotation as a reader writes it: ``float``, ``int | None``, ``list[str]``."""
    if hint is None or hint is type(None):
        return "None"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNION_TYPES:
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]" if args else base
    return getattr(hint, "__name__", str(hint))


def require_positive(params: Any, *names: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` whose value is not > 0 (NaN included);
    for the ``validate()`` of params dataclasses."""
    for name in names:
        value = getattr(params, name)
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def params_to_dict(params: Any) -> dict:
    return {} if params is None else dataclasses.asdict(params)


class Registry:
    """A named collection of plug-ins with wildcard listing and a factory.

    ``accepts`` (optional) checks an object's kind: it returns None for an object the registry
    takes, else a phrase saying what is wrong ("is not a subclass of ..."). ``card`` (optional) is
    the card class of the registry's plug-ins (:class:`bench.card.AttackCard`, ...)."""

    def __init__(self, kind: str, builtin_modules: Iterable[str] = (), *,
                 accepts: Callable[[Any], str | None] | None = None, card: type[PluginCard] | None = None):
        self.kind = kind
        self.group = f"bench.{kind}s"
        self._entries: dict[str, Entry] = {}
        self._builtin_modules = tuple(builtin_modules)
        self._loaded = False
        self._prefixes: dict[str, Callable[[str], Any]] = {}
        self._accepts = accepts
        self._card_cls = card

    def add_prefix(self, prefix: str, resolver: Callable[[str], Any]) -> None:
        """Names ``prefix:rest`` resolve through ``resolver(rest)`` (e.g. ``timm:resnet50``)."""
        self._prefixes[prefix] = resolver

    # -- registration -----------------------------------------------------------------------
    def register(self, name: str | Any | None = None, *, params: type | None = None,
                 **metadata) -> Any:
        """Decorator: ``@REG.register`` (the name from the plug-in's card), or
        ``@REG.register("name", params=Params, key=value)``.

        ``params`` defaults to the object's ``Params`` attribute (a dataclass) if it has one.
        """
        if name is not None and not isinstance(name, str):  # used bare: @REG.register
            obj, name = name, None
            self.add(self._name_of(obj), obj, params=params, **metadata)
            return obj

        def deco(obj: Any) -> Any:
            self.add(name or self._name_of(obj), obj, params=params, **metadata)
            return obj

        return deco

    def _name_of(self, obj: Any) -> str:
        card = obj.__dict__.get("card") if isinstance(obj, type) else None
        if card is not None and card.name:
            return card.name
        if isinstance(obj, type) and "name" in obj.__dict__:
            return obj.__dict__["name"]
        return obj.__name__.lower()

    def add(self, name: str, obj: Any, *, params: type | None = None, source: str = "builtin",
            **metadata) -> Entry:
        """Register ``obj`` under ``name``: its kind checked, a taken name refused, its card built."""
        self._check_kind(name, obj)
        self._check_collision(name, obj)
        if params is None:
            params = getattr(obj, "Params", None)
        if params is not None and not dataclasses.is_dataclass(params):
            raise TypeError(f"{self.kind} '{name}': params must be a dataclass, got {params!r}")
        card = self._card_for(name, obj, metadata, explicit=source == "builtin")
        if card is not None:
            meta = card.tags()
        else:
            meta = dict(getattr(obj, "metadata", {}) or {}) if isinstance(getattr(obj, "metadata", None), dict) else {}
            meta.update(metadata)
        if isinstance(obj, type):
            try:
                obj.name = name
            except (AttributeError, TypeError):
                pass
        entry = Entry(name=name, obj=obj, params_cls=params, metadata=meta, source=source, card=card)
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget a registered name (for tests that register a plug-in for a while)."""
        self._entries.pop(name, None)

    def _check_kind(self, name: str, obj: Any) -> None:
        problem = self._accepts(obj) if self._accepts else None
        if problem:
            raise PluginKindError(f"{self.kind} '{name}': {obj!r} {problem}")

    def _check_collision(self, name: str, obj: Any) -> None:
        old = self._entries.get(name)
        if old is None or old.obj is obj or _same_definition(old.obj, obj):
            return
        raise NameCollisionError(
            f"{self.kind} name '{name}' is already registered for {_where(old.obj)}; refusing to register "
            f"{_where(obj)} under the same name. Pick another name (names are unique per registry)")

    def _card_for(self, name: str, obj: Any, fields: dict, explicit: bool) -> PluginCard | None:
        """The plug-in's own card (named ``name``), or one built from its class attributes and the
        fields given at registration; None for registries without cards."""
        if self._card_cls is None:
            return None
        own = obj.__dict__.get("card") if isinstance(obj, type) else None
        if own is None:
            try:
                return self._card_cls.from_class(obj, name, **fields)
            except (CardError, TypeError) as exc:
                raise CardError(f"{self.kind} '{name}': {exc}") from exc
        if fields:
            raise CardError(f"{self.kind} '{name}': {sorted(fields)} given at registration beside its card; "
                            f"declare them once, in the card")
        if own.name and own.name != name and explicit:
            raise CardError(f"{self.kind} registered as '{name}' but its card is named '{own.name}'")
        return own if own.name == name else dataclasses.replace(own, name=name)

    # -- discovery --------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        try:
            eps = importlib_metadata.entry_points(group=self.group)
        except TypeError:  # pragma: no cover - python < 3.10
            eps = importlib_metadata.entry_points().get(self.group, [])
        for ep in eps:
            if ep.name in self._entries:
                continue
            try:
                obj = ep.load()
                if ep.name not in self._entries:
                    self.add(ep.name, obj, source="entry-point")
            except Exception as exc:  # a broken third-party plug-in must not hide the others
                import warnings

                warnings.warn(f"could not load {self.kind} plug-in '{ep.name}' ({ep.value}): {exc}")

    def names(self) -> list[str]:
        """Registered names (built-in and entry-point plug-ins; see :meth:`list`)."""
        return self.list("*")

    def list(self, pattern: str | Iterable[str] = "*", **metadata_filter) -> list[str]:
        """Names matching a wildcard (or any of several) and metadata (or card fields) equal to the
        filter, e.g. ``DEFENSES.list(stage="train")``.

        Only registered entries (built-in and entry-point plug-ins) are listed: an object resolved
        on demand from a ``module:Object`` path or a ``prefix:name`` is never matched by a wildcard,
        so a suite's ``"*"`` means the same thing whatever was looked up earlier in the process."""
        self._load()
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        out = []
        for name, entry in sorted(self._entries.items()):
            if entry.source in ("path", "prefix"):
                continue
            if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            if any(entry.describe(k) != v for k, v in metadata_filter.items()):
                continue
            out.append(name)
        return out

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def lookup(self, name: str) -> Entry | None:
        """The entry of a registered name (built-in, entry point, or a path resolved earlier in this
        process), else None. Never imports a module: safe on names read from results."""
        self._load()
        return self._entries.get(name)

    def get(self, name: str) -> Entry:
        """The entry for a registered name, a ``prefix:name`` or a ``module:Object`` path."""
        self._load()
        if name in self._entries:
            return self._entries[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes:
            obj = self._prefixes[prefix](rest)
            return self.add(name, obj, source="prefix")
        if sep:
            return self.add(name, self._resolve_path(name), source="path")
        raise UnknownNameError(self.kind, name, self._entries)

    def _resolve_path(self, name: str) -> Any:
        """The object a ``module:Object`` path names, if it is of this registry's kind. Refused
        before importing: malformed paths, the standard library and builtins; refused after
        importing (and before anything is called): an object of another kind."""
        module_name, _, attr = name.partition(":")
        parts = attr.split(".")
        if not all(p.isidentifier() for p in module_name.split(".")) or not all(p.isidentifier() for p in parts):
            raise UnknownNameError(self.kind, name, self._entries,
                                   reason="a plug-in path is 'package.module:Object'")
        if any(p.startswith("__") for p in parts):
            raise UnknownNameError(self.kind, name, self._entries,
                                   reason="a plug-in path cannot name a dunder attribute")
        top = module_name.split(".")[0]
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            raise UnknownNameError(self.kind, name, self._entries,
                                   reason=f"'{top}' is a module of the Python standard library, not a plug-in "
                                          f"package; refused without importing it")
        try:
            obj = importlib.import_module(module_name)
            for part in parts:
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise UnknownNameError(self.kind, name, self._entries, reason=str(exc)) from exc
        problem = self._accepts(obj) if self._accepts else None
        if problem:
            raise UnknownNameError(self.kind, name, self._entries,
                                   reason=f"{obj!r} {problem}, so it is not a {self.kind} plug-in; nothing was called")
        return obj

    def create(self, name: str, *args, **params) -> Any:
        """Factory: ``obj(params_dataclass(**params), *args)`` or ``obj(*args, **params)``."""
        entry = self.get(name)
        if entry.params_cls is not None:
            return entry.obj(entry.make_params(**params), *args)
        return entry.obj(*args, **params)

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _source_file(obj: Any) -> str | None:
    try:
        return inspect.getfile(obj)
    except (TypeError, OSError):
        return None


def _same_definition(a: Any, b: Any) -> bool:
    """The same code executed twice (a module imported under two names, or reloaded): the same
    qualified name, defined in the same file (or, where no file is known, the same module)."""
    qualname = getattr(a, "__qualname__", None)
    if qualname is None or qualname != getattr(b, "__qualname__", None):
        return False
    fa, fb = _source_file(a), _source_file(b)
    if fa and fb:
        return fa == fb
    return getattr(a, "__module__", None) == getattr(b, "__module__", None)


def subclass_of(module: str, cls_name: str) -> Callable[[Any], str | None]:
    """A kind check: the object must be a subclass of ``module.cls_name`` (imported when first
    needed, so the registry imports no plug-in framework module at import time)."""

    def check(obj: Any) -> str | None:
        base = getattr(importlib.import_module(module), cls_name)
        if isinstance(obj, type) and issubclass(obj, base):
            return None
        return f"is not a subclass of {module}.{cls_name}"

    return check


def model_factory(obj: Any) -> str | None:
    """A kind check for models: a ``torch.nn.Module`` class or a function taking ``num_classes``."""
    import torch.nn as nn

    if isinstance(obj, type):
        return None if issubclass(obj, nn.Module) else "is not a torch.nn.Module class"
    if not callable(obj):
        return "is not callable"
    try:
        takes = "num_classes" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        takes = False
    return None if takes else "is not a model factory (a function taking num_classes and image_size)"


ATTACKS = Registry("attack", builtin_modules=["bench.attack", "attacks"],
                   accepts=subclass_of("bench.attack", "Attack"), card=AttackCard)
DEFENSES = Registry("defense", builtin_modules=["bench.defense", "defenses"],
                    accepts=subclass_of("bench.defense", "Defense"), card=DefenseCard)
DATASETS = Registry("dataset", builtin_modules=["bench.datasets"],
                    accepts=subclass_of("bench.datasets.base", "DatasetSource"))
MODELS = Registry("model", builtin_modules=["bench.models"], accepts=model_factory)

REGISTRIES = {"attacks": ATTACKS, "defenses": DEFENSES, "datasets": DATASETS, "models": MODELS}
