"""The example third-party package installs, is found by entry point, and its regression check works."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# installing a package changes what every process of this environment finds: these tests share an
# xdist group with the others that do (tests/test_docs.py) or that run every installed plug-in
pytestmark = pytest.mark.xdist_group("environment")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "my_defense"


@pytest.fixture(scope="module")
def installed_example():
    """The example installed (editable) for this module's tests, and uninstalled afterwards, so that
    its defense does not join every ``defenses = ["*"]`` suite run later in this environment."""
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "-e", str(EXAMPLE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    import importlib
    import site

    importlib.invalidate_caches()
    for d in site.getsitepackages():  # let this process see the new editable install too
        site.addsitedir(d)
    yield EXAMPLE
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", "my-defense"],
                   capture_output=True, text=True)


def test_example_is_listed_and_its_own_test_passes(installed_example, tmp_path):
    out = subprocess.run([sys.executable, "run_bench.py", "list", "defenses"], cwd=ROOT, capture_output=True, text=True)
    assert "my_defense" in out.stdout
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(installed_example / "tests")],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_regression_check_passes_on_itself_and_fails_on_a_planted_regression(installed_example, tmp_path):
    script = [sys.executable, str(ROOT / "examples" / "regression_check.py"), "--results", str(tmp_path / "res"),
              "--baseline", str(tmp_path / "baseline.csv")]
    env_cache = {"BENCH_CACHE_DIR": str(tmp_path / "cache")}
    import os

    env = {**os.environ, **env_cache}
    first = subprocess.run(script + ["--update-baseline"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    same = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, env=env)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "OK: no regression" in same.stdout
    # plant a better baseline: the candidate now looks 20 points worse in ASR for my_defense
    base = pd.read_csv(tmp_path / "baseline.csv")
    mine = base["defense"] == "my_defense"
    base.loc[mine, "asr"] = (base.loc[mine, "asr"] - 0.2).clip(lower=0)
    base.loc[mine, "acc"] = (base.loc[mine, "acc"] + 0.2)
    base.to_csv(tmp_path / "baseline.csv", index=False)
    worse = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, env=env)
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "REGRESSIONS" in worse.stdout
