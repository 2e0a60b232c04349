"""The station install, tested the way a station installs: from a wheel, not editable.

`pip wheel . --no-deps` builds the wheel from a copy of the source tree; a fresh virtual
environment (no extras, no torch) installs it and runs the station's everyday commands on
the shipped demo bundle (tests/data/demo-bundle) and a short recording made here: `index`,
`search` by text and by `--like`, a file replay through `daemon`, and `status`. Then the
same wheel with `[capture]` must import the live-capture daemon. An editable install
(what `make test` uses everywhere else) cannot catch a subpackage left out of the wheel.

pip takes the dependencies from the machine's package index or cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tests" / "data" / "demo-bundle"
SKIP = {".venv", ".git", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}

pytestmark = pytest.mark.slow


def _run(cmd, *, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} -> {res.returncode}\n" \
                                f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _copy_source(dst: Path) -> Path:
    def ignore(folder, names):
        return [n for n in names if n in SKIP or n.endswith((".so", ".egg-info", ".pyc"))]
    shutil.copytree(ROOT, dst, ignore=ignore)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_source(tmp / "src")
    out = tmp / "dist"
    # --no-build-isolation: build with this interpreter's setuptools/cffi, no download.
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
          "-w", out, "-q"], cwd=src)
    wheels = list(out.glob("cvahash-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def station_venv(tmp_path_factory, wheel) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", venv])
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel])
    return venv


def test_wheel_carries_every_package_of_the_tree(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for tree, pkg in ((ROOT / "runtime", "cvahash"), (ROOT / "export", "cvahash/export")):
        for init in tree.rglob("__init__.py"):
            rel = init.relative_to(tree).parent.as_posix()
            want = f"{pkg}/{rel}/__init__.py" if rel != "." else f"{pkg}/__init__.py"
            assert want in names, f"{want} missing from {wheel.name}"
    for module in (ROOT / "runtime" / "commands").glob("*.py"):
        assert f"cvahash/commands/{module.name}" in names
    assert any(n.startswith("cvahash/kernel/_hamming_cffi") for n in names)


def test_station_commands_from_a_plain_wheel_install(station_venv, tmp_path):
    py = station_venv / "bin" / "python"
    cvahash = station_venv / "bin" / "cvahash"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CVAHASH_BUNDLE")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    # The install is the wheel's, not this checkout's, and torch is not there.
    where = _run([py, "-c", "import cvahash, importlib.util as u; print(cvahash.__file__); "
                  "print(u.find_spec('torch') is None, u.find_spec('sounddevice') is None)"],
                 env=env, cwd=tmp_path).stdout.split()
    assert str(station_venv) in where[0] and where[1:] == ["True", "True"], where

    rng = np.random.default_rng(0)
    t = np.arange(48000 * 25) / 48000
    x = 0.05 * rng.standard_normal(t.size)
    x[48000 * 12:48000 * 15] += 0.4 * np.sin(2 * np.pi * 3000 * t[:48000 * 3])
    rec = tmp_path / "20240612_053000.wav"
    sf.write(rec, x.astype(np.float32), 48000)

    db = tmp_path / "store"
    _run([cvahash, "index", rec, "--db", db, "--bundle", DEMO, "--station", "ridge-2",
          "--quiet"], env=env, cwd=tmp_path)
    text = json.loads(_run([cvahash, "search", "a bird singing", "--db", db, "--json", "-k",
                            "3"], env=env, cwd=tmp_path).stdout)
    assert len(text["hits"]) == 3
    assert {h["station"] for h in text["hits"]} == {"ridge-2"}
    like = json.loads(_run([cvahash, "search", "--like", f"{rec}@10", "--db", db, "--json",
                            "-k", "3"], env=env, cwd=tmp_path).stdout)
    assert {h["start_s"]: h["distance"] for h in like["hits"]}[10.0] == 0, like["hits"]
    # No [plots] extra here: --spectrograms names the command that adds it.
    res = subprocess.run([cvahash, "search", "owl", "--db", db, "--spectrograms",
                          tmp_path / "spec"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 1 and "pip install '.[plots]'" in res.stderr, res.stderr

    # The daemon replays the recording (no capture extra needed for a file source) and
    # `status` reads what it wrote.
    cfg = tmp_path / "station.toml"
    precision = json.loads((DEMO / "manifest.json").read_text())["precision"]
    cfg.write_text(f'[device]\nname = "ridge-2"\n[runtime]\nbundle = "{DEMO}"\nthreads = 1\n'
                   f'precision = "{precision}"\n'
                   f'[store]\npath = "{tmp_path / "live"}"\n'
                   f'[status]\npath = "{tmp_path / "status.json"}"\ninterval_s = 1\n')
    _run([cvahash, "config", "check", cfg], env=env, cwd=tmp_path)
    _run([cvahash, "daemon", "--config", cfg, "--source", f"file:{rec}", "--fast"], env=env,
         cwd=tmp_path)
    res = subprocess.run([cvahash, "status", "--config", cfg, "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    doc = json.loads(res.stdout)
    assert res.returncode == 1 and doc["verdict"] == "STOPPED", res.stdout + res.stderr
    assert doc["windows_total"] == doc["store_rows"] >= 4


def test_capture_extra_imports_the_daemon(station_venv, wheel, tmp_path):
    py = station_venv / "bin" / "python"
    _run([py, "-m", "pip", "install", "-q", f"cvahash[capture] @ {wheel.as_uri()}"])
    res = _run([py, "-c", "import sounddevice, cvahash.station.daemon as d, "
                "cvahash.station.capture as c; print(d.Daemon.__name__, sounddevice.__name__)"],
               cwd=tmp_path)
    assert res.stdout.split() == ["Daemon", "sounddevice"]
