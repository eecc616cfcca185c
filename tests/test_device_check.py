"""The device check (bench.device_check) on a CPU: it refuses to run without a GPU, loudly and
before writing anything; its report (JSON and summary) is built from fake measurements here, since
the measurements themselves need the GPU. No timing is asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import device_check as dc
from bench import engine
from bench.cli import main as cli_main
from bench.estimate import gpu_rate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runtime_restored():
    previous = engine.runtime()
    yield
    engine.configure(**vars(previous))


def test_refuses_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "dc.json"
    rc = cli_main(["device-check", "--data-root", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == dc.EXIT_NO_DEVICE != 0
    assert "device-check: FAILED" in err and "needs a CUDA GPU" in err and "does not skip" in err
    assert not out.exists()


def test_module_entry_point_fails_loudly_without_a_gpu(tmp_path):
    out = tmp_path / "dc.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")   # no GPU, even on a machine that has one
    proc = subprocess.run([sys.executable, "-m", "bench.device_check", "--data-root", str(tmp_path),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == dc.EXIT_NO_DEVICE, proc.stdout + proc.stderr
    assert "needs a CUDA GPU" in proc.stderr and "no JSON was written" in proc.stderr
    assert not out.exists()


def test_refuses_without_cifar10(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dc, "require_gpu", lambda: "Fake GPU")
    rc = cli_main(["device-check", "--out", str(tmp_path / "dc.json")])
    assert rc == dc.EXIT_NO_DEVICE and "needs --data-root" in capsys.readouterr().err
    rc = cli_main(["device-check", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "dc.json")])
    assert rc == dc.EXIT_NO_DEVICE and "needs CIFAR-10 under --data-root" in capsys.readouterr().err
    assert cli_main(["device-check", "--parts", "bogus"]) == dc.EXIT_NO_DEVICE


ENV = {"schema": dc.SCHEMA, "created": "2026-01-01T00:00:00+00:00", "host": "h", "python": "3", "torch": "2.x",
       "cuda": "13.0", "cudnn": 91000, "gpu": "Fake GPU", "gpu_count": 1, "gpu_memory_gb": 80.0}


def fake_throughput(*a, **k):
    return {m: {"engine_img_s": ips, "naive_img_s": ips / 4, "speedup": 4.0, "model_img_s": ips * 1.1,
                "engine_s": [1.0], "naive_s": [4.0], "n_train": 50000, "image_size": 32, "batch_size": 128,
                "workers": 8, "data_on_gpu": True}
            for m, ips in (("cnn_small", 40000.0), ("resnet18", 12000.0))}


def fake_parity(*a, tolerance=0.03, gap=0.004, **k):
    return {"model": "resnet18", "steps": 400, "batch_size": 128, "tolerance": tolerance, "n_train": 50000,
            "n_test": 10000, "float32": {"acc": 0.71, "seconds": 9.0}, "acc_gap": gap, "ok": abs(gap) <= tolerance,
            "bf16_channels_last": {"acc": 0.71 + gap, "seconds": 4.0}}


def fake_jobs(*a, n_train=20000, **k):
    return {"model": "cnn_small", "jobs_per_gpu": 3, "n_train": n_train, "epochs": 10, "one_job_wall_s": 20.0,
            "side_by_side_wall_s": 30.0, "speedup": 2.0}


def fake_cifar10(root, cache):
    """A CIFAR-10 subset of 8,000 training and 2,000 test images (only the sizes are read)."""
    return SimpleNamespace(train=range(8000), test=range(2000))


def fake_table2(*a, defense="fine_tuning", **k):
    return {"suite": "meca-table2", "dataset": "cifar10", "model": "resnet18", "attack": "badnet",
            "defenses": ["none", defense], "wall_s": 200.0,
            "runs": [{"defense": "none", "status": "ok", "acc": 0.93, "asr": 1.0, "wall_s": 190.0},
                     {"defense": defense, "status": "ok", "acc": 0.91, "asr": 0.05, "wall_s": 5.0}]}


def test_report_json_and_summary_from_fake_measurements(tmp_path):
    report = dc.new_report(ENV, dc.PARTS, {"data_root": "/data"})
    report.update(throughput=fake_throughput(), parity=fake_parity(), jobs_per_gpu=fake_jobs(),
                  table2_cell=fake_table2(), wall_s=300.0)
    assert dc.finish(report)["ok"] is True
    path = dc.write_report(tmp_path / "sub" / "dc.json", report)
    back = json.loads(path.read_text())
    assert back == json.loads(json.dumps(report))
    for key in ("schema", "gpu", "torch", "cuda", "throughput", "parity", "jobs_per_gpu", "table2_cell", "errors"):
        assert key in back
    text = "\n".join(dc.summary_lines(back))
    assert "device check on Fake GPU" in text and ": OK in 300s" in text
    assert "throughput resnet18" in text and "4.00x" in text
    assert "gap +0.0040 (tolerance 0.03): ok" in text
    assert "3 side by side 30.0s: 2.00x the throughput" in text
    assert "Table II cell cifar10/resnet18/badnet: 200s wall" in text
    # the dry run's estimate reads the same JSON
    assert gpu_rate(back, "resnet18", (3, 32, 32)) == (12000.0, "")
    assert gpu_rate(back, "mobilenetv2", (3, 32, 32))[0] is None

    bad = dc.new_report(ENV, dc.PARTS, {})
    bad.update(throughput=fake_throughput(), parity=fake_parity(gap=-0.2), jobs_per_gpu=fake_jobs(),
               errors={"table2_cell": "RuntimeError: boom"})
    assert dc.finish(bad)["ok"] is False
    text = "\n".join(dc.summary_lines(bad))
    assert "NOT OK" in text and "TOO LARGE" in text and "FAILED table2_cell: RuntimeError: boom" in text


def test_main_writes_each_part_and_records_a_failing_one(tmp_path, monkeypatch, capsys, runtime_restored):
    monkeypatch.setattr(dc, "require_gpu", lambda: "Fake GPU")
    monkeypatch.setattr(dc, "require_cifar10", lambda root: None)
    monkeypatch.setattr(dc, "environment", lambda gpu=None: dict(ENV))
    monkeypatch.setattr(dc, "_cifar10", fake_cifar10)
    monkeypatch.setattr(dc, "measure_throughput", fake_throughput)
    monkeypatch.setattr(dc, "measure_parity", fake_parity)
    monkeypatch.setattr(dc, "measure_jobs_per_gpu", fake_jobs)

    def boom(*a, **k):
        raise RuntimeError("the cell failed")

    monkeypatch.setattr(dc, "measure_table2_cell", boom)
    monkeypatch.setattr(dc, "table2_images", lambda root, cache: 4_750_000)
    out = tmp_path / "dc.json"
    rc = cli_main(["device-check", "--data-root", str(tmp_path), "--out", str(out), "--workdir", str(tmp_path / "w"),
                   "--time-budget", "0"])
    text = capsys.readouterr().out
    assert rc == dc.EXIT_FAILED
    report = json.loads(out.read_text())
    assert set(report["part_seconds"]) == set(dc.PARTS)
    assert report["throughput"]["cnn_small"]["engine_img_s"] == 40000.0 and report["jobs_per_gpu"]["speedup"] == 2.0
    assert report["errors"] == {"table2_cell": "RuntimeError: the cell failed"} and report["ok"] is False
    # the data measured on is recorded, and a jobs part asking more images than it holds gets them all
    assert report["data"] == {"dataset": "cifar10", "n_train": 8000, "n_test": 2000}
    assert report["jobs_per_gpu"]["n_train"] == 8000
    assert "FAILED table2_cell" in text

    monkeypatch.setattr(dc, "measure_table2_cell", fake_table2)
    rc = cli_main(["device-check", "--data-root", str(tmp_path), "--out", str(out), "--parts", "parity,table2_cell"])
    report = json.loads(out.read_text())
    assert rc == 0 and report["ok"] is True and report["parts"] == ["parity", "table2_cell"]
    assert report["table2_cell"]["runs"][1]["defense"] == "fine_tuning"


def test_the_table2_cell_is_not_started_past_the_time_budget(tmp_path, monkeypatch, capsys, runtime_restored):
    monkeypatch.setattr(dc, "require_gpu", lambda: "Fake GPU")
    monkeypatch.setattr(dc, "require_cifar10", lambda root: None)
    monkeypatch.setattr(dc, "environment", lambda gpu=None: dict(ENV))
    monkeypatch.setattr(dc, "_cifar10", fake_cifar10)
    monkeypatch.setattr(dc, "measure_throughput", fake_throughput)          # resnet18: 12,000 img/s
    monkeypatch.setattr(dc, "table2_images", lambda root, cache: 4_750_000)  # 100 epochs x 47,500
    monkeypatch.setattr(dc, "measure_table2_cell", fake_table2)
    out = tmp_path / "dc.json"
    args = ["device-check", "--data-root", str(tmp_path), "--out", str(out), "--parts", "throughput,table2_cell"]
    assert cli_main(args + ["--time-budget", "300"]) == dc.EXIT_FAILED      # about 400 s predicted
    report = json.loads(out.read_text())
    assert report["table2_cell"] is None and "not run" in report["errors"]["table2_cell"]
    assert "--time-budget of 300s" in capsys.readouterr().out
    assert cli_main(args + ["--time-budget", "600"]) == 0
    assert json.loads(out.read_text())["table2_cell"]["wall_s"] == 200.0


def test_the_published_device_check_is_one_the_estimate_reads():
    """reference/device-check holds a real run's JSON: it must stay readable by the estimate
    (schema, an engine rate per shipped GPU model, every part ok) as the code moves on."""
    from bench.estimate import load_device_check

    path = Path(__file__).resolve().parents[1] / "reference" / "device-check" / "nvidia-h200.json"
    check = load_device_check(path)
    assert check is not None and check["schema"] == "bench.device_check/1"
    assert check["ok"] and not check["errors"]
    for model in ("cnn_small", "resnet18"):
        rate, note = gpu_rate(check, model, (3, 32, 32))
        assert rate and rate > check["throughput"][model]["naive_img_s"] * 0.5 and note == ""
    assert dc.summary_lines(check)[0].startswith("device check on NVIDIA H200")
