"""Shared fixtures: small generated data, a private cache folder, one CPU thread a test process."""
from __future__ import annotations


import pytest
import torch

# one thread a test process: the outcome of a short training hangs on the float summation order,
# which the thread count changes, so every test sees the same numbers whether pytest runs alone or
# spread over pytest-xdist workers (``pytest -n auto``, the README's command: one per core)
torch.set_num_threads(1)


TEST_SALT = "tests-fixed-salt-0123456789abcdef"


def pytest_collection_modifyitems(config, items):
    """The ``slow`` tests first (a stable sort: otherwise collection order). pytest-xdist hands out
    work in collection order, so a minutes-long test collected last (the miniature suites) would
    run alone on one worker while the other idles; started first, the short tests fill in around
    it. Only the order changes, never which tests run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and data roots (nothing leaks between tests), and one thread
    again (an in-process suite run sets the torch threads to its worker's share of the cores)."""
    torch.set_num_threads(1)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    # one fixed evaluator salt: tests draw the same reserve and poison in every run (a results
    # folder gets a random one; see bench.protocol)
    monkeypatch.setenv("BENCH_SALT", TEST_SALT)
    from bench.cell import clear_memo

    clear_memo()
    yield
    clear_memo()


@pytest.fixture
def digits16():
    """The offline digits dataset at 16 px (fast)."""
    from bench.datasets import load_dataset

    return load_dataset("digits", image_size=16)


def toy_split(n: int = 64, size: int = 8, classes: int = 4, seed: int = 0):
    """Random uint8 images with balanced labels."""
    from bench.data import Split

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return Split(x, y)


# -- a simple attack and a backdoored digits model shared by the plug-in tests --------------------
from dataclasses import dataclass as _dataclass  # noqa: E402

from bench.attack import Attack, AttackParams  # noqa: E402
from bench.registry import ATTACKS  # noqa: E402


@_dataclass
class _PatchParams(AttackParams):
    size: int = 4


@ATTACKS.register("_test_patch")
class TestPatchAttack(Attack):
    """Test-only attack: a white square in the bottom-right corner, dirty label (an easy BadNet)."""

    Params = _PatchParams

    def apply_poison(self, x, idx):
        out = x.clone()
        out[:, :, -self.params.size:, -self.params.size:] = 1.0
        return out


# a 5 px patch and 6 epochs implant the backdoor whatever the draw (a 4 px patch in 4 epochs did
# only for some salts: ASR 0.48-0.99)
BACKDOOR_SPEC = dict(dataset="digits", model="cnn_tiny", attack="_test_patch", poison_ratio=0.1,
                     dataset_params={"image_size": 32}, attack_params={"size": 5},
                     train={"epochs": 6, "batch_size": 64, "lr": 0.05, "schedule": "onecycle"},
                     budget_scale=0.2)


@pytest.fixture(scope="session")
def backdoored_cell(tmp_path_factory):
    """(cell, backdoored model, no-defense metrics) for an easy BadNet-like attack on digits 32 px,
    trained once per test session. Use ``runner.build_context(defense, cell, model)`` to hand it
    to a defense exactly as the runner would."""
    from bench.runner import backdoored_model, build_cell
    from bench.spec import RunSpec

    cache = tmp_path_factory.mktemp("backdoor-cache")
    spec = RunSpec(defense="none", **BACKDOOR_SPEC)
    cell = build_cell(spec, cache_dir=cache, salt=TEST_SALT)   # built before the autouse fixture sets it
    model, meta = backdoored_model(cell, cache_dir=cache)
    return cell, model, meta["metrics"]


# -- running a defense on the backdoored cell (tests/plugins/test_<defense>.py) -------------------
def cell_info(model="cnn_tiny", n_train=1437, frac=0.05):
    """What ``Defense.check`` is told about a digits 32 px cell, without building one."""
    from bench.defense import CellInfo

    return CellInfo(10, (3, 32, 32), n_train, model, frac)


def run_defense(cell, model, name, budget_scale=None, **params):
    """Defense ``name`` on the ``backdoored_cell`` fixture, checked and handed its inputs exactly as
    the runner would (``runner.build_context``), run in this process, at the given budget scale if
    any. Returns (output, context, metrics on the clean and triggered test sets)."""
    from bench.defense import Budget, CellInfo
    from bench.evaluate import evaluate_model
    from bench.registry import DEFENSES
    from bench.runner import build_context

    defense = DEFENSES.create(name, **params)
    defense.check(CellInfo(cell.bundle.num_classes, cell.bundle.image_shape, len(cell.bundle.train),
                           cell.spec.model, cell.spec.reserve_fraction))
    ctx = build_context(defense, cell, model)
    if budget_scale is not None:
        ctx.budget = Budget(budget_scale)
    out = defense.run(ctx)
    return out, ctx, evaluate_model(out.model, cell.bundle.test, cell.triggered)


def run_defense_with_detection(name, backdoored_cell, scale, **params):
    """:func:`run_defense` at budget ``scale``, with its detection scored against the true poison
    mask: (output, metrics, detection metrics, context, cell)."""
    from bench.metrics import detection_metrics

    cell, model, _ = backdoored_cell
    out, ctx, metrics = run_defense(cell, model, name, budget_scale=scale, **params)
    det = detection_metrics(cell.poisoned.poison_mask, out.flags, out.scores)
    return out, metrics, det, ctx, cell


def run_defense_with_checkpoints(name, cell, model, **params):
    """Defense ``name`` on the fixture's cell, handed its inputs as the runner would (not checked),
    keeping the tags of the checkpoints it reports: (defense, context, output, clean test accuracy,
    checkpoint tags)."""
    from bench import engine
    from bench.registry import DEFENSES
    from bench.runner import build_context

    defense = DEFENSES.create(name, **params)
    tags = []
    ctx = build_context(defense, cell, model, checkpoint_cb=lambda tag, m: tags.append(tag))
    out = defense.run(ctx)
    acc = float((engine.predict(out.model, cell.bundle.test) == cell.bundle.test.y).float().mean())
    return defense, ctx, out, acc, tags


def check_runs_end_to_end_and_keeps_clean_accuracy(backdoored_cell, name, params):
    """A repair defense finishes on the fixture's cell above chance and leaves the cached
    backdoored model untouched."""
    cell, model, nodef = backdoored_cell
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, ctx, res = run_defense(cell, model, name, **params)
    assert res["acc"] > 0.5, res  # 10 classes: chance is 0.1
    assert out.model is not model  # the cached backdoored model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def check_reserve_fraction_is_refused(name):
    """A defense that trains on the clean reserve refuses a fraction that leaves it none, and one
    outside (0, 1)."""
    from bench.defense import DefenseConfigError
    from bench.registry import DEFENSES, ParamsError

    with pytest.raises(DefenseConfigError, match="reserve"):  # 0.05% of 1000 images: none
        DEFENSES.create(name, reserve_fraction=0.0005).check(cell_info(n_train=1000))
    with pytest.raises(ParamsError, match="reserve_fraction"):
        DEFENSES.create(name, reserve_fraction=1.5)


# -- poisoning random images with a trigger attack (tests/plugins/test_<attack>.py) ---------------
TARGET = 1                     # the attacks' default target class (AttackParams), the fixture's too
ATTACK_N, ATTACK_SIZE, ATTACK_CLASSES = 400, 32, 10
ATTACK_RATIO = {"sig": 0.05, "tact": 0.05}   # clean-label and source-specific: within one class


def make_attack(name, **params):
    """The attack with its MeCa preset (target 1), ``params`` on top."""
    return ATTACKS.create(name, **{"preset": "meca", **params})


def attack_data(size=ATTACK_SIZE, n=ATTACK_N, seed=0):
    return toy_split(n=n, size=size, classes=ATTACK_CLASSES, seed=seed)


def run_attack(name, split=None, ratio=None, seed=0, **params):
    """Check and poison ``split`` (default :func:`attack_data`) with a seeded generator: (attack,
    clean split, poisoned output)."""
    split = split if split is not None else attack_data()
    att = make_attack(name, **params)
    ratio = ATTACK_RATIO.get(name, 0.1) if ratio is None else ratio
    att.check(ATTACK_CLASSES, split.y, split.image_shape, ratio)
    out = att.poison(split, ratio, torch.Generator().manual_seed(seed))
    return att, split, out


# -- attacks that train a model first: Narcissus, LC, IAD (tests/plugins/test_<attack>.py) --------
def attack_context(bundle, cache, seed=0, scale=1.0):
    """An ``AttackContext`` whose model factory builds a seeded ``cnn_tiny``, one-epoch recipe."""
    from bench.attack import AttackContext
    from bench.budget import Budget
    from bench.engine import TrainConfig
    from bench.models import create_model

    shape = bundle.image_shape

    def factory():
        torch.manual_seed(123)
        return create_model("cnn_tiny", bundle.num_classes, shape[-1])

    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, schedule="onecycle")
    return AttackContext(bundle.num_classes, shape, torch.Generator().manual_seed(seed), model_factory=factory,
                         train_config=cfg, budget=Budget(scale), cache_dir=None if cache is None else str(cache))


def forbid_training(monkeypatch):
    """Any training from here on fails the test (the artifact must come from the cache)."""
    from bench import engine

    def refuse(*a, **k):
        raise AssertionError("trained although the artifact was cached")

    monkeypatch.setattr(engine, "fit", refuse)


def check_refuses_more_than_the_target_class(name, bundle, monkeypatch):
    """A clean-label attack that poisons target-class images only refuses, before any training, a
    ratio above the target class's share of the training set."""
    from bench.attack import AttackConfigError

    forbid_training(monkeypatch)
    y = bundle.train.y
    max_ratio = (y == TARGET).sum().item() / len(y)
    with pytest.raises(AttackConfigError, match="holds only"):
        ATTACKS.create(name).check(10, y, bundle.image_shape, max_ratio + 0.02)


def poison_with(name, bundle, ctx, ratio, **params):
    """Check and poison the bundle's training set with ``name`` (generator seed 7): (attack, output)."""
    attack = ATTACKS.create(name, **params)
    attack.check(bundle.num_classes, bundle.train.y, bundle.image_shape, ratio)
    return attack, attack.poison(bundle.train, ratio, torch.Generator().manual_seed(7), ctx)


def check_clean_label_rules(bundle, out, ratio):
    """Exactly ``ratio`` of the set poisoned, all of the target class; labels and every other image
    unchanged."""
    import math

    train = bundle.train
    assert out.info["n_poison"] == math.floor(ratio * len(train)) == int(out.poison_mask.sum())
    assert (train.y[out.poison_mask] == TARGET).all()
    assert torch.equal(out.data.y, train.y)                       # labels never change
    changed = (out.data.x != train.x).flatten(1).any(1)
    assert not changed[~out.poison_mask].any()                     # nothing else touched
