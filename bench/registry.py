"""Plug-in registries in the style of timm's ``_registry.py``.

Four registries hold everything the suite can cross in a grid: ``ATTACKS``, ``DEFENSES``,
``DATASETS`` and ``MODELS``. An entry is registered with a decorator::

    @DEFENSES.register("fine_tuning")
    class FineTuning(Defense): ...

and found again by name (``DEFENSES.get("fine_tuning")``), by wildcard
(``DEFENSES.list("fine*")``), or built by a factory (``DEFENSES.create("fine_tuning", lr=0.02)``).

Third-party packages add entries without forking the suite, in two ways:

* an entry point in the group ``bench.<registry>`` (``bench.defenses``, ``bench.attacks``, ...)
  whose value is the plug-in object (``my_pkg.module:MyDefense``); the entry point's name is the
  registered name;
* a ``module:Object`` path wherever a name is accepted (command line, suite files, Python).

Unknown names raise :class:`UnknownNameError` listing the close matches.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, Callable, Iterable


class UnknownNameError(KeyError):
    """A name that no registry entry, entry point or ``module:Object`` path resolves."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        msg = (f"unknown {kind} '{name}'.{hint} Known {kind}s: {', '.join(known) or '(none)'}. "
               f"A third-party plug-in can also be named as 'package.module:Object'.")
        super().__init__(msg)
        self.kind, self.name, self.close = kind, name, close

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ParamsError(ValueError):
    """Parameters given to a plug-in that its params dataclass does not accept."""


@dataclass
class Entry:
    """One registered plug-in: the object, its params dataclass and free-form metadata."""

    name: str
    obj: Any
    params_cls: type | None = None
    metadata: dict = field(default_factory=dict)
    source: str = "builtin"  # builtin | entry-point | path

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
    """Instantiate ``params_cls`` from defaults plus ``overrides``; unknown keys fail clearly."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        close = {u: difflib.get_close_matches(u, list(fields), n=3) for u in unknown}
        hints = "; ".join(f"'{u}' (did you mean {', '.join(c)}?)" if c else f"'{u}'"
                          for u, c in close.items())
        raise ParamsError(f"{owner}: unknown parameter(s) {hints}. "
                          f"Accepted: {', '.join(sorted(fields))}")
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
    """A named collection of plug-ins with wildcard listing and a factory."""

    def __init__(self, kind: str, builtin_modules: Iterable[str] = ()):
        self.kind = kind
        self.group = f"bench.{kind}s"
        self._entries: dict[str, Entry] = {}
        self._builtin_modules = tuple(builtin_modules)
        self._loaded = False
        self._prefixes: dict[str, Callable[[str], Any]] = {}

    def add_prefix(self, prefix: str, resolver: Callable[[str], Any]) -> None:
        """Names ``prefix:rest`` resolve through ``resolver(rest)`` (e.g. ``timm:resnet50``)."""
        self._prefixes[prefix] = resolver

    # -- registration -----------------------------------------------------------------------
    def register(self, name: str | None = None, *, params: type | None = None,
                 **metadata) -> Callable[[Any], Any]:
        """Decorator: ``@REG.register("name", params=Params, key=value)``.

        ``params`` defaults to the object's ``Params`` attribute (a dataclass) if it has one.
        """

        def deco(obj: Any) -> Any:
            self.add(name or getattr(obj, "name", None) or obj.__name__.lower(), obj,
                     params=params, **metadata)
            return obj

        return deco

    def add(self, name: str, obj: Any, *, params: type | None = None, source: str = "builtin",
            **metadata) -> Entry:
        if params is None:
            params = getattr(obj, "Params", None)
        if params is not None and not dataclasses.is_dataclass(params):
            raise TypeError(f"{self.kind} '{name}': params must be a dataclass, got {params!r}")
        meta = dict(getattr(obj, "metadata", {}) or {}) if isinstance(getattr(obj, "metadata", None), dict) else {}
        meta.update(metadata)
        if isinstance(obj, type):
            try:
                obj.name = name
            except (AttributeError, TypeError):
                pass
        entry = Entry(name=name, obj=obj, params_cls=params, metadata=meta, source=source)
        self._entries[name] = entry
        return entry

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
            except Exception as exc:  # a broken third-party plug-in must not hide the others
                import warnings

                warnings.warn(f"could not load {self.kind} plug-in '{ep.name}' ({ep.value}): {exc}")
                continue
            if ep.name not in self._entries:
                self.add(ep.name, obj, source="entry-point")

    def names(self) -> list[str]:
        """Registered names (built-in and entry-point plug-ins; see :meth:`list`)."""
        return self.list("*")

    def list(self, pattern: str | Iterable[str] = "*", **metadata_filter) -> list[str]:
        """Names matching a wildcard (or any of several) and metadata equal to the filter.

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
            if any(entry.metadata.get(k) != v for k, v in metadata_filter.items()):
                continue
            out.append(name)
        return out

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def get(self, name: str) -> Entry:
        """The entry for a registered name or a ``module:Object`` path."""
        self._load()
        if name in self._entries:
            return self._entries[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes:
            obj = self._prefixes[prefix](rest)
            return self.add(name, obj, source="prefix")
        if ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                obj = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as exc:
                raise UnknownNameError(self.kind, name, self._entries) from exc
            return self.add(name, obj, source="path")
        raise UnknownNameError(self.kind, name, self._entries)

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


ATTACKS = Registry("attack", builtin_modules=["bench.attack", "attacks"])
DEFENSES = Registry("defense", builtin_modules=["bench.defense", "defenses"])
DATASETS = Registry("dataset", builtin_modules=["bench.datasets"])
MODELS = Registry("model", builtin_modules=["bench.models"])

REGISTRIES = {"attacks": ATTACKS, "defenses": DEFENSES, "datasets": DATASETS, "models": MODELS}
