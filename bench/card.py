"""Plug-in cards: one typed declaration per attack or defense.

A card says, once and in one place, what a plug-in is (its name, display label, paper and
reference code), what it needs and does (a defense's stage and inputs, an attack's label mode),
and where the reports show it (which of the MeCa paper's tables and figures, in which order, and
which of its parameter sets is a *variant* rather than its main row). The registry checks it, the
runner reads the declared inputs from it, and the reports read labels and table membership from
it, so a new plug-in is one file and no report knows any plug-in by name::

    @DEFENSES.register
    class FineTuning(Defense):
        card = DefenseCard(name="fine_tuning", label="FineTuning", paper="Liu et al., RAID 2018",
                           stage="repair", needs_reserve=True, tables=("table2", "table3"))

The base classes (:class:`bench.attack.Attack`, :class:`bench.defense.Defense`) copy a card's
declared fields onto the class attributes the framework reads (``Defense.stage``,
``Defense.needs_reserve``, ``Attack.label_mode``, ...) through :func:`bind_card`; declaring one of
them beside the card is refused, so nothing is said twice. A plug-in without a card (an older or
third-party one that sets those class attributes directly) gets a card built from its class
attributes when it is registered (:meth:`PluginCard.from_class`).

Cards are frozen; a bad value (an unknown stage, a table the reports do not draw, a variant
parameter the plug-in does not have) raises :class:`CardError` when the class is defined.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

from bench.cost import CostPhase

NO_DEFENSE = "none"
"""The name under which the no-defense row of every cell is recorded (the backdoored model as it
is); reports compare every defense with it."""

TABLES = ("table2", "table3", "table4", "table5", "table6", "table7", "fig4", "fig6", "fig7")
"""The MeCa paper's tables and figures a plug-in can appear in:

* ``table2`` / ``table3``: the classic / adaptive attack tables; an attack listing one is a row
  of it, a defense a column (the extended versions show every defense that was run);
* ``table4``: a defense with and without its :attr:`DefenseCard.variant_params`;
* ``table5`` / ``table6`` / ``table7``: the defense studied under other poison ratios, other
  models, and on clean data;
* ``fig4`` / ``fig6`` / ``fig7``: the defense whose per-sample KL scores, enhancement-round
  checkpoints and partition-rate runs the figures draw."""

DEFAULT_ORDER = 1000
"""The order of a plug-in that declares none: after every plug-in that does, by name."""


class CardError(ValueError):
    """A plug-in card that cannot be right (refused when the class is defined or registered)."""


@dataclass(frozen=True)
class PluginCard:
    """What every plug-in card says.

    * ``name``: the registered name (filled in by the registry when left empty);
    * ``label``: the display label in tables and figures (default: the name);
    * ``paper``: the citation of the method's paper; ``code``: its reference implementation;
    * ``tables``: which of :data:`TABLES` it appears in;
    * ``order``: its place among the rows or columns of those tables (the paper's order; ties
      and undeclared orders go by name).
    """

    name: str = ""
    label: str = ""
    paper: str = ""
    code: str = ""
    tables: tuple[str, ...] = ()
    order: int = DEFAULT_ORDER

    CLASS_ATTRIBUTES: ClassVar[tuple[str, ...]] = ()
    """Card fields copied onto the plug-in class for the framework to read."""

    def __post_init__(self):
        for name in ("name", "label", "paper", "code"):
            _check_type(self, name, str)
        tables = self.tables
        if isinstance(tables, str):
            tables = (tables,)
        if not isinstance(tables, (tuple, list)) or not all(isinstance(t, str) for t in tables):
            raise CardError(f"{self._who()}: tables must be a tuple of names, got {self.tables!r}")
        unknown = [t for t in tables if t not in TABLES]
        if unknown:
            raise CardError(f"{self._who()}: unknown table(s) {unknown}; known: {', '.join(TABLES)}")
        object.__setattr__(self, "tables", tuple(tables))
        _check_type(self, "order", int)

    def _who(self) -> str:
        return f"{type(self).__name__} '{self.name or '?'}'"

    @property
    def display(self) -> str:
        """The label, or the name when the card gives none."""
        return self.label or self.name

    def tags(self) -> dict:
        """What the plug-in is and needs, in a few ``key: value`` pairs for listings
        (``run_bench.py list``): its kind (stage or label mode) and the fields it sets away from
        their defaults; the descriptive fields (label, paper, code, tables, the settings' sources)
        stay on the card."""
        skip = {"name", "label", "paper", "code", "tables", "order", "variant_params", "variant_name",
                "cost_phases", "miniature_params", "settings"}
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name not in skip and (value != default or f.name in ("stage", "label_mode")):
                out[f.name] = value
        return out

    @classmethod
    def from_class(cls, obj: Any, name: str, **fields: Any) -> "PluginCard":
        """The card of a plug-in that declares none: its class attributes, and ``fields`` given
        at registration (``@DEFENSES.register("x", paper="...")``)."""
        declared = {a: getattr(obj, a) for a in cls.CLASS_ATTRIBUTES if hasattr(obj, a)}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise CardError(f"{cls.__name__} '{name}': unknown card field(s) {unknown}; "
                            f"known: {', '.join(sorted(known))}")
        return cls(**{**declared, **fields, "name": name})


@dataclass(frozen=True)
class AttackCard(PluginCard):
    """An attack's card: the common fields, and

    * ``label_mode``: ``"dirty"`` (poisoned images are relabelled to the target), ``"clean"``
      (they keep their own label: only target-class images are poisoned) or ``"none"`` (the
      no-attack);
    * ``needs_model``: it trains a surrogate or generator in ``prepare()``;
    * ``source_specific``: ASR is counted on source-class images only (TaCT).
    """

    label_mode: str = "dirty"
    needs_model: bool = False
    source_specific: bool = False

    CLASS_ATTRIBUTES: ClassVar[tuple[str, ...]] = ("label_mode", "needs_model", "source_specific")
    LABEL_MODES: ClassVar[tuple[str, ...]] = ("dirty", "clean", "none")

    def __post_init__(self):
        super().__post_init__()
        if self.label_mode not in self.LABEL_MODES:
            raise CardError(f"{self._who()}: label_mode must be one of {', '.join(self.LABEL_MODES)}, "
                            f"got {self.label_mode!r}")
        for name in ("needs_model", "source_specific"):
            _check_type(self, name, bool)


@dataclass(frozen=True)
class DefenseCard(PluginCard):
    """A defense's card: the common fields, and what it is handed (its declaration):

    * ``stage``: ``"repair"`` (gets the cell's backdoored model) or ``"train"`` (trains from
      scratch on the poisoned training set);
    * ``needs_train``: a repair defense that also reads the poisoned training set (train-stage
      defenses always get it);
    * ``needs_reserve`` / ``reserve_labels``: the clean reserve, with or without labels (a
      defense whose needs depend on its parameters sets ``self.needs_reserve`` in ``__init__``;
      the card gives the class default);
    * ``detects``: it returns per-sample scores and/or flags over the training set;
    * ``starts_from_victim``: a train-stage defense whose first phase is the cell's standard
      training (e.g. MeCa's full warm-up) is handed the cell's backdoored model instead, the same
      training done once per cell, and is charged its cost (its steps, epochs and time head the
      run's ``phases``); a defense whose choice depends on its parameters sets
      ``self.starts_from_victim`` in ``__init__``;

    and for the reports:

    * ``variant_params``: parameter values that make a run a *variant* (shown in the variants
      table and Table IV, never in the main row), e.g. MeCa's ``{"relabel_relearn": True}``;
    * ``variant_name``: a short name of that variant for Table IV's "without / with" columns
      (default: the parameters as ``key=value``);
    * ``cost``: a note on its cost in standard trainings; ``provisional``: the method's
      reproduction is not settled yet;
    * ``cost_phases``: what it trains, phase by phase (:class:`bench.cost.CostPhase`), from which
      :mod:`bench.estimate` prices a suite before it runs; ``None``: not declared (counted as
      unknown), ``()``: it trains nothing;
    * ``miniature_params``: parameter values a miniature run (:mod:`bench.miniature`) sets, for the
      loops the budget scale does not shorten (e.g. MeCa's enhancement rounds): the code path is
      kept, its repetitions cut;
    * ``settings``: where its default settings come from, ``{"param" (or "p1, p2"): (source,
      note)}`` with a source of :data:`SETTING_SOURCES` (the paper's, a reconstruction of what the
      paper's text lost, or the result of this suite's development search) and a note saying which
      sentence or search; the report's ``settings.md`` lists them beside the defaults.
    """

    stage: str = "repair"
    needs_train: bool = False
    needs_reserve: bool = False
    reserve_labels: bool = True
    detects: bool = False
    starts_from_victim: bool = False
    variant_params: Mapping[str, Any] = field(default_factory=dict)
    variant_name: str = ""
    cost: str = ""
    provisional: bool = False
    cost_phases: tuple[CostPhase, ...] | None = None
    miniature_params: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    CLASS_ATTRIBUTES: ClassVar[tuple[str, ...]] = ("stage", "needs_train", "needs_reserve",
                                                   "reserve_labels", "detects", "starts_from_victim")
    STAGES: ClassVar[tuple[str, ...]] = ("repair", "train")

    def __post_init__(self):
        super().__post_init__()
        if self.stage not in self.STAGES:
            raise CardError(f"{self._who()}: stage must be one of {', '.join(self.STAGES)}, got {self.stage!r}")
        for name in ("needs_train", "needs_reserve", "reserve_labels", "detects", "provisional",
                     "starts_from_victim"):
            _check_type(self, name, bool)
        for name in ("variant_name", "cost"):
            _check_type(self, name, str)
        if not isinstance(self.variant_params, Mapping) or not all(isinstance(k, str) for k in self.variant_params):
            raise CardError(f"{self._who()}: variant_params must map parameter names to values, "
                            f"got {self.variant_params!r}")
        object.__setattr__(self, "variant_params", MappingProxyType(dict(self.variant_params)))
        if not isinstance(self.miniature_params, Mapping) or not all(isinstance(k, str) for k in self.miniature_params):
            raise CardError(f"{self._who()}: miniature_params must map parameter names to values, "
                            f"got {self.miniature_params!r}")
        object.__setattr__(self, "miniature_params", MappingProxyType(dict(self.miniature_params)))
        _check_settings(self)
        if self.cost_phases is not None:
            if not isinstance(self.cost_phases, (tuple, list)) or \
                    not all(isinstance(c, CostPhase) for c in self.cost_phases):
                raise CardError(f"{self._who()}: cost_phases must be a tuple of CostPhase, got {self.cost_phases!r}")
            object.__setattr__(self, "cost_phases", tuple(self.cost_phases))
        if self.starts_from_victim and self.stage != "train":
            raise CardError(f"{self._who()}: starts_from_victim is for train-stage defenses (a repair "
                            f"defense is always handed the backdoored model)")
        if "table4" in self.tables and not self.variant_params:
            raise CardError(f"{self._who()}: Table IV compares a defense with its variant; "
                            f"give variant_params")

    def declaration(self) -> dict:
        """What the defense is handed: the dict ``Defense.declaration()`` returns."""
        return {"stage": self.stage, "needs_train": self.needs_train or self.stage == "train",
                "needs_reserve": self.needs_reserve, "reserve_labels": self.reserve_labels,
                "detects": self.detects, "starts_from_victim": self.starts_from_victim}

    def is_variant(self, params: Mapping[str, Any]) -> bool:
        """True when ``params`` (a run's defense parameters) set every variant parameter."""
        return bool(self.variant_params) and all(
            key in params and params[key] == value for key, value in self.variant_params.items())

    @property
    def variant_display(self) -> str:
        """The variant's short name (``variant_name``, else ``key=value, ...``)."""
        return self.variant_name or ", ".join(f"{k}={v}" for k, v in self.variant_params.items())

    def setting_params(self) -> set[str]:
        """The parameter names the ``settings`` keys cover (a key may list several: ``"a, b"``)."""
        return {name.strip() for key in self.settings for name in key.split(",")}

    def check_params(self, params_cls: type | None) -> None:
        """Refuse variant and miniature parameters, and Params fields named by the cost phases,
        that the plug-in's params dataclass does not have."""
        named = {f for c in self.cost_phases or () for f in c.fields()}
        if not named and not self.variant_params and not self.miniature_params and not self.settings:
            return
        names = {f.name for f in dataclasses.fields(params_cls)} if params_cls is not None else set()
        costed = sorted(named - names)
        if costed:
            raise CardError(f"{self._who()}: cost_phases name parameter(s) {costed} that its Params do not "
                            f"have ({', '.join(sorted(names)) or 'none'})")
        for what in ("variant_params", "miniature_params", "settings"):
            keys = self.setting_params() if what == "settings" else set(getattr(self, what))
            unknown = sorted(keys - names)
            if unknown:
                raise CardError(f"{self._who()}: {what} name parameter(s) {unknown} that its "
                                f"Params do not have ({', '.join(sorted(names)) or 'none'})")


# Where a defense's default setting comes from (DefenseCard.settings)
SETTING_SOURCES = {
    "paper": "stated in the method's paper",
    "reconstructed": "lost from (or never given in) the paper's text: a reading this suite chose",
    "development": "chosen by this suite's development search, on development cells only",
}


def _check_settings(card: "DefenseCard") -> None:
    settings = card.settings
    if not isinstance(settings, Mapping):
        raise CardError(f"{card._who()}: settings must map parameter names to (source, note), got {settings!r}")
    for key, value in settings.items():
        if not isinstance(key, str) or not key.strip():
            raise CardError(f"{card._who()}: settings keys must be parameter names, got {key!r}")
        if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise CardError(f"{card._who()}: settings[{key!r}] must be (source, note), got {value!r}")
        if value[0] not in SETTING_SOURCES:
            raise CardError(f"{card._who()}: settings[{key!r}] has source {value[0]!r}; known: "
                            f"{', '.join(SETTING_SOURCES)}")
    object.__setattr__(card, "settings", MappingProxyType(dict(settings)))


def _check_type(card: PluginCard, name: str, kind: type) -> None:
    value = getattr(card, name)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        raise CardError(f"{card._who()}: {name} must be a {kind.__name__}, got {type(value).__name__} {value!r}")


def bind_card(cls: type, card_cls: type[PluginCard]) -> None:
    """Give a plug-in class that declares its own ``card`` the class attributes the framework reads.

    Called from ``__init_subclass__`` of the plug-in base classes. A class without a card of its
    own is left as it is (it inherits its parent's attributes, or declares them itself). Declaring
    one of the card's fields as a class attribute beside the card is refused: say it once."""
    card = cls.__dict__.get("card")
    if card is None:
        return
    if not isinstance(card, card_cls):
        raise CardError(f"{cls.__qualname__}: card must be a {card_cls.__name__}, got {type(card).__name__}")
    twice = [a for a in card.CLASS_ATTRIBUTES if a in cls.__dict__]
    if twice:
        raise CardError(f"{cls.__qualname__}: {', '.join(twice)} declared both in its card and as class "
                        f"attribute(s); declare them once, in the card")
    if isinstance(card, DefenseCard):
        card.check_params(getattr(cls, "Params", None))
    for attr in card.CLASS_ATTRIBUTES:
        setattr(cls, attr, getattr(card, attr))
    if card.name:
        cls.name = card.name
