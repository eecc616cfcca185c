"""The engine's CUDA-only paths, exercised on the CPU so that they cannot rot unnoticed.

On a GPU the engine trains under bf16 autocast with channels-last tensors (``bench.engine``:
``_autocast``, ``prepare_model``, ``to_model_layout``); on the CPU it normally does neither. Here
every shipped model (``run_bench.py list models``) takes a few training steps through
:func:`bench.engine.fit` and scores one batch through :func:`bench.engine.map_batches`, twice:
under ``torch.autocast("cpu", bfloat16)`` with channels-last (the runtime's ``cpu_amp`` switch,
off by default) and in float32 NCHW, from the same weights on the same batches; the per-step
losses must agree and each leg must really have run in its own dtype and memory layout.

Tolerance: relative 5e-2 on each step's loss. bf16 keeps 8 bits of mantissa (a relative rounding
of about 4e-3 per operation); through a deep network and one SGD update the loss moves by up to
about 2e-2 (measured: MobileNetV2, and ResNet-34's second step, where batch statistics over 8
small images amplify the rounding), while a broken path (a wrong cast, a scrambled layout, a NaN)
moves it far more or fails outright. The learning rate is small (1e-3) so that the update does not
amplify the difference further (at 1e-2 ResNet-34's second step moved by 6e-2).

Sizes: batch 8 of 16x16 images, two steps. The paths do not depend on the resolution, and on a
CPU without native bf16 autocast's bf16 convolutions are several times slower than float32, so
32x32 would cost several times more for nothing.

``run --cpu-bf16`` (the runtime's ``cpu_amp`` for a whole run): the evaluator and the defense's
process both compute in bf16, and every record says which dtype it computed in.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench import engine
from bench.data import Split
from bench.defense import Defense, DefenseOutput
from bench.engine import TrainConfig
from bench.models import MODELS, create_model
from bench.registry import DEFENSES

SHIPPED = ["cnn_tiny", "cnn_small", "resnet_tiny", "resnet18", "resnet34", "mobilenetv2"]
RTOL = 5e-2
SIZE, BATCH, STEPS = 16, 8, 2


@pytest.fixture(autouse=True)
def _runtime():
    previous, threads = engine.runtime(), torch.get_num_threads()
    torch.set_num_threads(1)   # batches of 8 small images: a second thread gains little and spins under load
    yield
    engine.configure(**vars(previous))
    torch.set_num_threads(threads)


def _data() -> Split:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (BATCH * STEPS, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return Split(x, torch.arange(BATCH * STEPS) % 10)


def _leg(name: str, bf16: bool):
    """(per-step losses, what each step saw, scoring logits, the model) of one leg."""
    engine.configure(device="cpu", amp=bf16, cpu_amp=bf16, channels_last=bf16)
    torch.manual_seed(0)
    model = create_model(name, 10, SIZE)
    losses, seen = [], []

    def loss_fn(m, batch):
        out = m(batch.x)
        seen.append((out.dtype, batch.x.is_contiguous(memory_format=torch.channels_last)))
        loss = F.cross_entropy(out, batch.y)
        losses.append(float(loss.detach()))
        return loss

    data = _data()
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-3, momentum=0.9, schedule="constant", augment=True)
    engine.fit(model, data, cfg, loss_fn=loss_fn, generator=torch.Generator().manual_seed(0))
    with engine.eval_mode(model):
        logits = engine.map_batches(lambda x, y, i: model(x), data, batch_size=BATCH, indices=torch.arange(BATCH))
    return losses, seen, logits, model


def test_the_shipped_models_are_all_covered():
    assert sorted(MODELS.list("*")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_bf16_channels_last_matches_float32(name):
    ref_losses, ref_seen, ref_logits, _ = _leg(name, bf16=False)
    losses, seen, logits, model = _leg(name, bf16=True)

    assert len(losses) == len(ref_losses) == STEPS
    assert ref_seen == [(torch.float32, False)] * STEPS            # float32, NCHW
    assert seen == [(torch.bfloat16, True)] * STEPS                # bf16 autocast, channels-last
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    for step, (a, b) in enumerate(zip(losses, ref_losses)):
        assert a == pytest.approx(b, rel=RTOL), f"{name}: step {step} loss {a} (bf16) vs {b} (float32)"
    assert logits.dtype == torch.float32 and logits.shape == ref_logits.shape == (BATCH, 10)
    assert torch.isfinite(logits).all()


def test_cpu_autocast_is_off_by_default():
    engine.configure(device="cpu", amp=True)   # the default runtime: amp means CUDA only
    data = _data()
    model = create_model("cnn_tiny", 10, SIZE)
    with engine.eval_mode(model):
        out = engine.map_batches(lambda x, y, i: torch.tensor([x.dtype == torch.float32, model(x).dtype == torch.float32]),
                                 data, batch_size=len(data))
    assert out.bool().all()


# -- run --cpu-bf16: the whole run (evaluator and defense process) computes in bf16 and says so -----
@DEFENSES.register("_dtype_probe")
class DtypeProbe(Defense):
    """Reports the compute dtype its own process was configured with."""

    stage = "repair"

    def run(self, ctx):
        return DefenseOutput(ctx.model, info={"compute_dtype": engine.compute_dtype()})


BF16_SUITE = """
description = "cpu-bf16 test"
datasets = [{name = "digits", params = {image_size = 16}}]
models = ["cnn_tiny"]
attacks = ["badnet"]
ratios = [0.1]
seeds = [0]
defenses = ["none", "_dtype_probe"]
[budget]
epochs = 1
n_train = 300
n_test = 60
"""


def _run_bf16(tmp_path, *extra):
    from bench.cli import main

    path = tmp_path / "bf16.toml"
    path.write_text(BF16_SUITE)
    return main(["run", "--suite", str(path), "--results", str(tmp_path / "results"), "--device", "cpu",
                 "--workers", "1", "--no-progress", *extra])


def test_cpu_bf16_runs_the_evaluator_and_the_defense_in_bf16_and_records_it(tmp_path, monkeypatch):
    from bench.store import Store

    monkeypatch.setattr(engine, "cpu_bf16_supported", lambda: True)   # emulated where not native: slower, same path
    assert _run_bf16(tmp_path, "--cpu-bf16") == 0
    records = {r["defense"]: r for r in Store(tmp_path / "results").iter_records()}
    assert {r["compute_dtype"] for r in records.values()} == {"bf16"}
    assert records["_dtype_probe"]["defense_info"]["compute_dtype"] == "bf16"


def test_records_say_fp32_without_it_and_the_flag_is_refused_where_bf16_is_not_native(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "cpu_bf16_supported", lambda: False)
    assert _run_bf16(tmp_path, "--cpu-bf16") != 0
    assert "--cpu-bf16: this CPU has no native bfloat16" in capsys.readouterr().out
    assert not (tmp_path / "results" / "records").exists() or not any((tmp_path / "results" / "records").iterdir())
    from bench.store import Store

    assert _run_bf16(tmp_path) == 0
    records = list(Store(tmp_path / "results").iter_records())
    assert len(records) == 2 and {r["compute_dtype"] for r in records} == {"fp32"}
    assert next(r for r in records if r["defense"] == "_dtype_probe")["defense_info"]["compute_dtype"] == "fp32"
