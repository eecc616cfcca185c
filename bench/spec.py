"""Run specifications: what one run is, and the hashes that name it.

A :class:`RunSpec` fixes everything a run's numbers depend on (dataset and its subset sizes, model,
attack and parameters, poison ratio, defense and parameters, seed, training recipe, budget,
clean-reserve fraction). Its ``run_id`` is a hash of those fields, so the same spec always maps to
the same record, and ``cell_id`` hashes only the fields the backdoored model depends on, so every
repair defense of a cell shares one trained model. Where the data lives and which suite asked for
the run are not part of the hash.

The clean reserve is carved out of the training set *before* poisoning, so its fraction names the
cell (the victim trains on the rest). A poison ratio of 0 is a clean cell (:attr:`RunSpec.is_clean`).
A miniature run (``run --miniature``: shrunken sizes, possibly generated stand-in data) has
``miniature=True``, which is hashed, so it never shares a run id, cell or model with a real run.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import InitVar, asdict, dataclass, field, fields

from bench.budget import Budget


def stable_hash(obj, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def derive_seed(seed: int, *tags) -> int:
    """A 63-bit seed derived from a run seed and tags (independent streams per purpose)."""
    return int(stable_hash([seed, *tags], 15), 16)


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    model: str
    attack: str
    poison_ratio: float
    defense: str = "none"
    seed: int = 0
    attack_params: dict = field(default_factory=dict)
    defense_params: dict = field(default_factory=dict)
    dataset_params: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)          # TrainConfig overrides of the backdoor training
    budget: Budget = field(default_factory=Budget)
    reserve_fraction: float = 0.05
    n_train: int | None = None
    n_test: int | None = None
    miniature: bool = False                            # a shrunken run (``run --miniature``, bench.miniature)
    suite: str = field(default="", compare=False)
    budget_scale: InitVar[float | None] = None         # shorthand: RunSpec(..., budget_scale=0.2)

    _NOT_HASHED = ("suite",)
    _DEFENSE_FIELDS = ("defense", "defense_params", "budget")

    def __post_init__(self, budget_scale):
        budget = Budget.from_value(self.budget)
        if budget_scale is not None:
            budget = Budget(scale=budget_scale, min_steps=budget.min_steps, min_epochs=budget.min_epochs)
        object.__setattr__(self, "budget", budget)

    @property
    def is_clean(self) -> bool:
        """A clean cell: the victim trains on unpoisoned data (poison ratio 0)."""
        return self.poison_ratio == 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        names = {f.name for f in fields(cls)} | {"budget_scale"}
        return cls(**{k: v for k, v in d.items() if k in names})

    def hashed(self) -> dict:
        """The fields that name the run, with the code of its attack and defense plug-ins
        (:func:`plugin_code`): a changed plug-in is a new run."""
        d = self.to_dict()
        for k in self._NOT_HASHED:
            d.pop(k, None)
        if not d.get("miniature"):   # only a miniature run names it: every other run keeps its id
            d.pop("miniature", None)
        if d["budget"].get("min_epochs") == 1.0:   # likewise the default least epoch count
            d["budget"].pop("min_epochs")
        d["code"] = {"attack": plugin_code("attack", self.attack), "defense": plugin_code("defense", self.defense)}
        return d

    @property
    def run_id(self) -> str:
        return stable_hash(self.hashed())

    @property
    def cell(self) -> dict:
        """The fields the poisoned set and the backdoored model depend on (the reserve fraction
        among them: the reserve is carved out before poisoning). The budget is a defense field,
        except for attacks that train a surrogate or generator (``needs_model``): their poison
        depends on the attacker's scaled budget, so its scale names their cell too."""
        d = self.hashed()
        for k in self._DEFENSE_FIELDS:
            d.pop(k, None)
        d["code"] = {"attack": d["code"]["attack"]}
        if _attack_needs_model(self.attack):
            d["attack_budget_scale"] = self.budget.scale
        return d

    @property
    def cell_id(self) -> str:
        return stable_hash(self.cell)

    @property
    def model_id(self) -> str:
        """Names the trained (backdoored) model. A clean cell (ratio 0) trains on unpoisoned data,
        so its model does not depend on the attack: all clean cells of a (dataset, model, seed)
        share one training; the attack still decides the triggered test set."""
        d = self.cell
        if self.is_clean:
            d["attack"], d["attack_params"], d["code"] = "(clean)", {}, {}
            d.pop("attack_budget_scale", None)
        return stable_hash(d)

    def label(self, preset: bool = True) -> str:
        """``dataset/model/attack@ratio/defense/seedN``; a defense's explicit parameters follow its
        name, its named preset first (``meca(preset=spec-v1,rounds=8)``), so two variants of one
        defense are told apart in every job list. ``preset=False`` leaves the preset out (the form
        a ``--defenses`` filter written before presets were shown also matches)."""
        variant = {k: v for k, v in sorted(self.defense_params.items()) if k != "preset"}
        if preset and self.defense_params.get("preset") is not None:
            variant = {"preset": self.defense_params["preset"], **variant}
        defense = self.defense + (f"({','.join(f'{k}={v}' for k, v in variant.items())})" if variant else "")
        return (f"{self.dataset}/{self.model}/{self.attack}@{self.poison_ratio:g}/"
                f"{defense}/seed{self.seed}")


def _attack_needs_model(name: str) -> bool:
    """Whether the attack trains a model to make its poison (unknown names: True, the safe side)."""
    try:
        from bench.registry import ATTACKS

        return bool(getattr(ATTACKS.get(name).obj, "needs_model", True))
    except Exception:
        return True


_CODE: dict[tuple[str, str], str] = {}


def plugin_code(kind: str, name: str) -> str:
    """A fingerprint of a plug-in's code: the SHA-256 of its module's source without its
    documentation (:func:`code_text`: comments, docstrings and blank lines do not count, so
    rewording a docstring reruns nothing), with the distribution's version for an installed
    third-party package. Plug-ins of the framework
    itself (the ``clean`` attack, the ``none`` defense) are ``"builtin"``; an unknown name is
    ``"unknown"`` (the suite's validation reports it)."""
    key = (kind, name)
    if key not in _CODE:
        _CODE[key] = _code_fingerprint(kind, name)
    return _CODE[key]


def _code_fingerprint(kind: str, name: str) -> str:
    import inspect
    import sys

    from bench.registry import ATTACKS, DEFENSES

    try:
        obj = (ATTACKS if kind == "attack" else DEFENSES).get(name).obj
    except Exception:  # noqa: BLE001
        return "unknown"
    module = getattr(obj, "__module__", "") or ""
    if module.startswith("bench.") or module == "bench":
        return "builtin"
    try:
        source = inspect.getsourcefile(sys.modules[module]) or ""
        with open(source, encoding="utf-8") as fh:
            digest = hashlib.sha256(code_text(fh.read()).encode()).hexdigest()[:16]
    except (KeyError, TypeError, OSError, SyntaxError, ValueError):
        return "unknown"
    version = ""
    try:
        from importlib import metadata

        dist = [d for d in _distributions().get(module.split(".")[0], [])
                if d != "backdoor-bench"]   # the suite's own plug-ins: the source hash says it all
        if dist:
            version = metadata.version(dist[0]) + ":"
    except Exception:  # noqa: BLE001
        version = ""
    return version + digest


def code_text(source: str) -> str:
    """Python source less its documentation: comments, bare string statements (docstrings of
    modules, classes and functions, and the strings documenting a constant) and blank lines
    removed, trailing spaces stripped. Found from source positions (``ast`` and ``tokenize``),
    which do not depend on the Python version, unlike ``ast.dump``."""
    import ast
    import io
    import tokenize

    lines = source.splitlines()
    cut: dict[int, list[tuple[int, int]]] = {}   # line (0-based) -> [(start col, end col)]

    def blank(start: tuple[int, int], end: tuple[int, int]) -> None:
        (l0, c0), (l1, c1) = start, end
        for line in range(l0, l1 + 1):
            cut.setdefault(line, []).append((c0 if line == l0 else 0, c1 if line == l1 else len(lines[line])))

    def chars(line: int, col: int) -> int:   # ast's columns count UTF-8 bytes, tokenize's characters
        return len(lines[line].encode()[:col].decode(errors="ignore"))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            l0, l1 = node.lineno - 1, node.end_lineno - 1
            blank((l0, chars(l0, node.col_offset)), (l1, chars(l1, node.end_col_offset)))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            blank((tok.start[0] - 1, tok.start[1]), (tok.end[0] - 1, tok.end[1]))
    kept = []
    for i, line in enumerate(lines):
        for c0, c1 in sorted(cut.get(i, ()), reverse=True):
            line = line[:c0] + line[c1:]
        if line.strip():
            kept.append(line.rstrip())
    return "\n".join(kept)


@functools.lru_cache(maxsize=1)
def _distributions() -> dict:
    from importlib import metadata

    return metadata.packages_distributions()
