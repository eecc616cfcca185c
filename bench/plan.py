"""Planning: which jobs a suite's run specs need, given what the results store already holds.

The specs are grouped into cells (dataset, model, attack + params, poison ratio, seed, recipe). Each
cell gets one ``backdoor`` job (its ``none`` run), or an ``artifact`` job that only trains the
backdoored model into the artifact cache when the suite has no ``none`` run for it and the model is
not cached yet. ``repair`` jobs (post-training defenses) reuse that model; ``train`` jobs
(training-time defenses such as MeCa and ABL) do not need it. Jobs come longest-first: backdoor
jobs, then train jobs, then repair jobs grouped by cell; the clean-cell jobs that only reuse a
defense output another job computes go last (:func:`reuse_last`).

Nothing here runs anything: :func:`plan` reads the store's statuses and the cache's file names only.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.spec import RunSpec

if TYPE_CHECKING:
    from bench.store import Store

JOB_KINDS = ("backdoor", "artifact", "train", "repair")


@dataclass
class Job:
    kind: str                # backdoor | artifact | train | repair
    spec: RunSpec
    status: str = "todo"     # todo | rerun (for the dry run)

    @property
    def label(self) -> str:
        if self.kind == "artifact":
            s = self.spec
            return f"{s.dataset}/{s.model}/{s.attack}@{s.poison_ratio:g}/seed{s.seed} (backdoored model only)"
        return self.spec.label()


def defense_stage(spec: RunSpec) -> str:
    """The job kind of a spec's defense: ``train`` (a training-time defense that trains from
    scratch) or ``repair`` (it works on the backdoored model: a repair defense, or a train-stage
    one that starts from the victim, which therefore waits for the cell's model like a repair)."""
    from bench.defense import hands_model
    from bench.registry import DEFENSES

    defense = DEFENSES.create(spec.defense, **dict(spec.defense_params))
    return "repair" if hands_model(defense.declaration()) else "train"


def model_cached(cache_dir: Path, spec: RunSpec, salt: str) -> bool:
    """Whether the artifact cache holds a spec's backdoored model for this salt (clean cells share
    one model; :func:`bench.cell.backdoored_model` names it ``<model_id>-<salt_id>``)."""
    from bench.artifacts import artifact_paths
    from bench.cell import model_key, models_folder

    return all(p.exists() for p in artifact_paths(models_folder(cache_dir), model_key(spec, salt)))


def _artifact_spec(spec: RunSpec) -> RunSpec:
    """The cell's no-defense spec, which names the job that only trains the backdoored model."""
    return spec.__class__(**{**spec.to_dict(), "defense": "none", "defense_params": {}})


def plan(specs: list[RunSpec], store: "Store", cache_dir: Path, salt: str, *, force: bool = False,
         retry_failed: bool = False) -> tuple[list[Job], dict]:
    """The jobs to run for ``specs`` given what the store holds and the cache (under the results
    folder's ``salt``), longest-first; and counts (``runs``, ``done``, ``failed_kept``, ``todo``)."""
    statuses = store.statuses()
    counts = {"runs": len(specs), "done": 0, "failed_kept": 0, "todo": 0}
    cells: OrderedDict[str, list[RunSpec]] = OrderedDict()
    for s in specs:
        cells.setdefault(s.cell_id, []).append(s)
    backdoor, train, repair = [], [], []
    models_planned: set[str] = set()

    def job(kind: str, s: RunSpec) -> Job:
        return Job(kind, s, "rerun" if s.run_id in statuses else "todo")

    for cell_specs in cells.values():
        todo = []
        for s in cell_specs:
            st = statuses.get(s.run_id)
            if force or st is None or (st == "failed" and retry_failed):
                todo.append(s)
            elif st == "ok":
                counts["done"] += 1
            else:
                counts["failed_kept"] += 1
        if not todo:
            continue
        counts["todo"] += len(todo)
        none = [s for s in todo if s.defense == "none"]
        for s in none:
            backdoor.append(job("backdoor", s))
            models_planned.add(s.model_id)
        others = [s for s in todo if s.defense != "none"]
        if others and not none and others[0].model_id not in models_planned \
                and not model_cached(cache_dir, others[0], salt):
            models_planned.add(others[0].model_id)
            backdoor.append(Job("artifact", _artifact_spec(others[0])))
        for s in others:
            stage = defense_stage(s)
            (train if stage == "train" else repair).append(job("train" if stage == "train" else "repair", s))
    return reuse_last(backdoor + train + repair), counts


def reuse_last(jobs: list[Job]) -> list[Job]:
    """Move the clean-cell defense jobs whose output another job computes (same
    :func:`bench.runner.clean_defense_id`) to the end of the queue: they only evaluate the cached
    output, and started early they would wait on its lock while a worker idles."""
    from bench.runner import clean_defense_id

    first, later, seen = [], [], set()
    for job in jobs:
        s = job.spec
        if job.kind in ("train", "repair") and s.is_clean:
            key = clean_defense_id(s)
            if key in seen:
                later.append(job)
                continue
            seen.add(key)
        first.append(job)
    return first + later
