"""The fair protocol tried the way a cheater would: one defense per route to the ground truth.

Each cheating defense runs through the real runner (so in its own process, as every defense
does), tries one route (frames, gc, closures, module globals, files reachable from its process,
the reserve, the seeds, writing into its inputs), and reports what it found in its ``info``; the
test asserts that it learned nothing. The evaluator's side of the same properties (the reserve
carved out before poisoning, seeds salted) is tested on every registered attack.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import sys

import pytest
import torch
import torch.nn as nn

from bench.defense import Defense, DefenseOutput
from bench.registry import ATTACKS, DEFENSES
from bench.runner import build_cell, execute
from bench.spec import RunSpec, derive_seed

SPEC = dict(dataset="digits", model="cnn_tiny", attack="badnet", poison_ratio=0.1,
            dataset_params={"image_size": 16}, train={"epochs": 1, "batch_size": 64, "lr": 0.05})
GROUND_TRUTH_TYPES = ("Cell", "PoisonedTrain", "TriggeredTest", "DatasetBundle", "Store")


def _ground_truth_objects(objects) -> list[str]:
    from bench.attack import Attack

    found = []
    for o in objects:
        try:
            cls = type(o)
            name = cls.__name__
            if (name in GROUND_TRUTH_TYPES and cls.__module__.startswith("bench")) or isinstance(o, Attack):
                found.append(name)
        except Exception:  # noqa: BLE001 - exotic objects
            continue
    return found


@DEFENSES.register("_cheat_frames")
class FrameCheater(Defense):
    """Walks up the call stack looking for the runner's locals (``cell``, ``spec``)."""

    def run(self, ctx):
        found, frame = [], sys._getframe()
        while frame is not None:
            for key, value in frame.f_locals.items():
                if key in ("cell", "spec", "bundle", "poisoned", "triggered") or \
                        _ground_truth_objects([value]):
                    found.append(f"{frame.f_code.co_name}:{key}")
            frame = frame.f_back
        return DefenseOutput(ctx.model, info={"found": found})


@DEFENSES.register("_cheat_gc")
class GcCheater(Defense):
    """Searches every object the garbage collector knows for a cell, an attack or a test set."""

    def run(self, ctx):
        return DefenseOutput(ctx.model, info={"found": _ground_truth_objects(gc.get_objects())})


@DEFENSES.register("_cheat_closures")
class ClosureCheater(Defense):
    """Opens the model factory's closure (it once held the Cell) and the context's attributes."""

    def run(self, ctx):
        found = []
        fn = ctx._model_factory
        for c in (getattr(fn, "__closure__", None) or ()):
            try:
                found += _ground_truth_objects([c.cell_contents])
                if isinstance(c.cell_contents, dict):
                    found += _ground_truth_objects(c.cell_contents.values())
            except ValueError:
                pass
        for slot in type(ctx).__slots__:
            found += _ground_truth_objects([getattr(ctx, slot, None)])
        return DefenseOutput(ctx.model, info={"found": found})


@DEFENSES.register("_cheat_globals")
class GlobalsCheater(Defense):
    """Reads module globals of the framework (memos, caches) in its process."""

    def run(self, ctx):
        found = []
        for name, module in list(sys.modules.items()):
            if not (name == "bench" or name.startswith("bench.")):
                continue
            for value in list(vars(module).values()):
                found += [f"{name}:{t}" for t in _ground_truth_objects([value])]
                if isinstance(value, dict):
                    found += [f"{name}:{t}" for t in _ground_truth_objects(list(value.values()))]
        return DefenseOutput(ctx.model, info={"found": found})


@DEFENSES.register("_cheat_files")
class FileCheater(Defense):
    """Looks for paths into the results, cache or data folders: open descriptors, working folder,
    environment (also as the process started), command line."""

    def run(self, ctx):
        seen = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                seen.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        seen.append(os.getcwd())
        seen += [f"{k}={v}" for k, v in os.environ.items()]
        with open("/proc/self/environ", "rb") as fh:
            seen += fh.read().decode(errors="replace").split("\0")
        with open("/proc/self/cmdline", "rb") as fh:
            seen += fh.read().decode(errors="replace").split("\0")
        return DefenseOutput(ctx.model, info={"seen": seen, "cwd_files": os.listdir(".")})


@DEFENSES.register("_cheat_reserve")
class ReserveCheater(Defense):
    """Compares the clean reserve with the training set image by image: a reserve image at a
    poisoned position (or anywhere in the training set) would show the trigger and the target."""

    needs_train = True
    needs_reserve = True

    def run(self, ctx):
        train = ctx.train.x.flatten(1)
        reserve = ctx.reserve.x.flatten(1)
        same = [(train == r).all(1).nonzero().flatten().tolist() for r in reserve]
        near = [int(((train.int() - r.int()).abs().sum(1) < 40).sum()) for r in reserve]
        return DefenseOutput(ctx.model, info={"identical": sum(len(s) for s in same), "near": sum(near),
                                              "reserve": len(reserve), "train": len(train)})


@DEFENSES.register("_cheat_seeds")
class SeedCheater(Defense):
    """Brute-forces the run seed from its own seeds (every derivation the suite ever used), to
    replay the poison draw."""

    def run(self, ctx):
        mine = {ctx.seed, ctx.generator.initial_seed()}
        hits = []
        for run_seed in range(200):
            for tags in (("defense-seed",), ("defense", self.name), ("defense", self.name, "seed"),
                         ("defense", self.name, "generator"), ("poison",), ("reserve",)):
                if derive_seed(run_seed, *tags) in mine:
                    hits.append([run_seed, *tags])
        return DefenseOutput(ctx.model, info={"hits": hits})


@DEFENSES.register("_cheat_write")
class WriteCheater(Defense):
    """Writes into its inputs (training set, reserve, model) to sabotage the next defense."""

    needs_train = True
    needs_reserve = True

    def run(self, ctx):
        ctx.train.x.zero_()
        ctx.train.y.zero_()
        ctx.reserve.x.zero_()
        with torch.no_grad():
            for p in ctx.model.parameters():
                p.zero_()
        return DefenseOutput(ctx.model)


@DEFENSES.register("_input_probe")
class InputProbe(Defense):
    """Honest: reports a checksum of what it is handed."""

    needs_train = True
    needs_reserve = True

    def run(self, ctx):
        sums = {"train": int(ctx.train.x.long().sum()), "labels": int(ctx.train.y.sum()),
                "reserve": int(ctx.reserve.x.long().sum()),
                "model": float(sum(p.abs().sum() for p in ctx.model.parameters()))}
        return DefenseOutput(ctx.model, info=sums)


class _Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@DEFENSES.register("_cheat_arch")
class ArchitectureCheater(Defense):
    """Returns a model of another architecture (a wrapper: its weights do not fit the cell's)."""

    def run(self, ctx):
        return DefenseOutput(_Wrapper(ctx.model))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the module: the cell's backdoored model is trained once."""
    return tmp_path_factory.mktemp("cheaters-cache")


@pytest.fixture(autouse=True)
def _use_shared_cache(shared_cache, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(shared_cache))


def _info(defense: str, **kw) -> dict:
    record, _ = execute(RunSpec(defense=defense, **{**SPEC, **kw}))
    assert record["status"] == "ok"
    return record["defense_info"]


@pytest.mark.parametrize("defense", ["_cheat_frames", "_cheat_gc", "_cheat_closures", "_cheat_globals"])
def test_no_ground_truth_object_is_reachable_in_the_defense_process(defense):
    assert _info(defense)["found"] == []


def test_no_path_to_results_cache_or_data_is_reachable(tmp_path):
    info = _info("_cheat_files")
    # (the project's own folder is not a secret: the code is there, and so may be python itself)
    secret_places = [os.environ["BENCH_CACHE_DIR"], os.environ["BENCH_DATA_ROOT"], str(tmp_path.parent)]
    for entry in info["seen"]:
        assert not any(place in entry for place in secret_places), entry
        assert not entry.startswith("BENCH_"), entry
    assert info["cwd_files"] == []        # an empty, private working folder


def test_the_reserve_shares_no_image_with_the_training_set():
    info = _info("_cheat_reserve")
    assert info["reserve"] > 0 and info["identical"] == 0 and info["near"] == 0


def test_the_seeds_cannot_be_walked_back():
    assert _info("_cheat_seeds")["hits"] == []


def test_writing_into_inputs_changes_nothing_for_the_next_defense():
    honest = _info("_input_probe")
    _info("_cheat_write")                     # same process, same memoised cell
    assert _info("_input_probe") == honest
    assert honest["train"] > 0 and honest["model"] > 0


def test_a_model_of_another_architecture_is_refused(tmp_path):
    from bench.outcome import ArchitectureError

    with pytest.raises(ArchitectureError, match="not of the cell's architecture"):
        execute(RunSpec(defense="_cheat_arch", **SPEC))


@pytest.mark.parametrize("attack", [a for a in ATTACKS.names() if not a.startswith("_") and a != "clean"])
def test_reserve_is_carved_out_before_poisoning_on_every_attack(attack, monkeypatch):
    """The evaluator's side, on every attack: the reserve is disjoint from the victim's positions
    (so from every poisoned and cover sample), its size is floor(fraction * N), and a different
    salt gives different draws from the same run seed."""
    from bench.cell import split_reserve
    from bench.protocol import Seeds

    if ATTACKS.get(attack).obj.needs_model:   # surrogate-based attacks: the split is the same code path
        pytest.skip("trains a surrogate; the split does not depend on the attack")
    spec = RunSpec(defense="none", **{**SPEC, "attack": attack, "poison_ratio": 0.05,
                                      "attack_params": {"preset": "meca"} if _has_preset(attack) else {}})
    cell = build_cell(spec, salt="a" * 32)
    n = len(cell.bundle.train)
    reserve_idx, victim_idx = split_reserve(n, spec.reserve_fraction, cell.seeds)
    assert len(reserve_idx) == len(cell.reserve) == int(spec.reserve_fraction * n)
    assert not set(reserve_idx.tolist()) & set(victim_idx.tolist())
    assert len(cell.poisoned.data) == len(victim_idx)
    assert torch.equal(cell.reserve.x, cell.bundle.train.x[reserve_idx])        # clean versions
    other, _ = split_reserve(n, spec.reserve_fraction, Seeds(spec.seed, "b" * 32))
    assert not torch.equal(other, reserve_idx)


def _has_preset(attack: str) -> bool:
    return "meca" in (getattr(ATTACKS.get(attack).obj, "presets", {}) or {})


@dataclasses.dataclass
class LookParams:
    path: str = ""
    pid: int = 0


@DEFENSES.register("_cheat_look")
class PathGuesser(Defense):
    """A determined cheater that guessed where the cache is and who its evaluator is."""

    Params = LookParams

    def run(self, ctx):
        listing = os.listdir(self.params.path) if os.path.isdir(self.params.path) else None
        return DefenseOutput(ctx.model, info={"listing": listing,
                                              "evaluator_visible": os.path.exists(f"/proc/{self.params.pid}")})


def _namespaces_permitted() -> bool:
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _namespaces_permitted(), reason="unshare is not permitted here")
def test_namespace_isolation_hides_the_cache_and_the_evaluator(shared_cache):
    params = {"path": str(shared_cache), "pid": os.getpid()}
    spec = RunSpec(defense="_cheat_look", defense_params=params, **SPEC)
    plain_info = execute(spec)[0]["defense_info"]
    assert plain_info["listing"] and plain_info["evaluator_visible"]   # what process isolation leaves
    record, _ = execute(spec, isolation="namespace")
    assert record["isolation"] == "namespace"
    assert record["defense_info"]["listing"] == [] and not record["defense_info"]["evaluator_visible"]


class _Payload:
    """A pickle that would create a marker file when loaded by an unrestricted unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_model_in_the_cache_is_refused_and_never_executed(tmp_path):
    from bench.cell import model_key, models_folder
    from bench.files import UnsafeFileError

    cache = tmp_path / "crafted-cache"
    spec = RunSpec(defense="none", **SPEC)
    cell = build_cell(spec, cache_dir=cache)
    marker = tmp_path / "pwned"
    folder, key = models_folder(cache), model_key(spec, cell.salt)
    folder.mkdir(parents=True)
    torch.save({"weights": _Payload(str(marker))}, folder / f"{key}.pt")
    (folder / f"{key}.json").write_text("{}")
    with pytest.raises(UnsafeFileError, match="not plain tensor data"):
        execute(spec, cache_dir=cache)
    assert not marker.exists()
    assert (folder / f"{key}.pt").exists()      # kept as evidence


def test_a_changed_plugin_is_a_new_run(tmp_path, monkeypatch):
    from bench import spec as spec_mod

    source = tmp_path / "drifting_defense.py"
    body = ("from bench.defense import Defense, DefenseOutput\nfrom bench.registry import DEFENSES\n\n\n"
            "@DEFENSES.register('_drifting')\nclass Drifting(Defense):\n    '''Test plug-in.'''\n\n"
            "    def run(self, ctx):\n        return DefenseOutput(ctx.model{})\n")
    source.write_text(body.format(""))
    monkeypatch.syspath_prepend(str(tmp_path))
    import drifting_defense  # noqa: F401

    spec = RunSpec(defense="_drifting", **SPEC)
    before = spec.run_id
    source.write_text(body.format(", info={'changed': True}"))
    spec_mod._CODE.clear()
    assert spec.run_id != before and spec.cell_id == RunSpec(defense="none", **SPEC).cell_id
    DEFENSES.remove("_drifting")


def test_records_follow_the_umask(tmp_path):
    from bench.files import UMASK, atomic_write_text

    atomic_write_text(tmp_path / "r.json", "{}")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~UMASK
