"""Errors and notes speak the command line: flags and commands, never Python calls."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cvahash.commands.wording import in_cli_words
from cvahash.errors import StoreError
from cvahash.model.bundle import ModelBundle
from cvahash.store.code_store import CodeStore

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tests" / "data" / "demo-bundle"
PYTHON_ADVICE = re.compile(r"mode=|CodeStore\.|cvahash\[")


def cvahash(*args, cwd=None, ok=None):
    env = {k: v for k, v in os.environ.items() if k != "CVAHASH_BUNDLE"}
    res = subprocess.run([sys.executable, "-m", "cvahash", *map(str, args)], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    if ok is not None:
        assert (res.returncode == 0) == ok, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The demo bundle over a 31 s recording of station ridge-2, captured 2024-06-12."""
    tmp = tmp_path_factory.mktemp("msg")
    rec = tmp / "20240612_053000.wav"
    sf.write(rec, np.random.default_rng(1).standard_normal(48000 * 31).astype(np.float32)
             * 0.1, 48000)
    cvahash("index", rec, "--db", tmp / "store", "--bundle", DEMO, "--station", "ridge-2",
            "--quiet", ok=True)
    return tmp / "store"


def test_no_source_file_tells_a_user_to_install_a_package_that_is_on_no_index():
    for path in [*ROOT.glob("runtime/**/*.py"), *ROOT.glob("export/**/*.py")]:
        if path.name == "wording.py":
            continue
        assert "'cvahash[" not in path.read_text(), f"{path}: say pip install '.[EXTRA]'"


def test_store_api_advice_is_reworded_for_the_command_line(tmp_path):
    with CodeStore.create(tmp_path / "s", 64, "fp") as _:
        pass
    messages = []
    with CodeStore.open(tmp_path / "s", "r") as ro:
        with pytest.raises(StoreError) as info:
            ro.append(np.zeros((1, 8), np.uint8), [])
        messages.append(str(info.value))
    with CodeStore.open(tmp_path / "s", "a"):
        with pytest.raises(StoreError) as info:
            CodeStore.open(tmp_path / "s", "a")
        messages.append(str(info.value))
    (tmp_path / "not-a-store").mkdir()
    with pytest.raises(StoreError) as info:
        CodeStore.open(tmp_path / "not-a-store", "r")
    messages.append(str(info.value))
    messages.append("needs the workstation extra: pip install 'cvahash[export]'")
    for message in messages:
        said = in_cli_words(message)
        assert not PYTHON_ADVICE.search(said), said
    assert "pip install '.[export]'" in in_cli_words(messages[-1])


def test_a_second_writer_is_told_what_to_stop(store, tmp_path):
    rec = tmp_path / "more.wav"
    sf.write(rec, np.zeros(48000 * 3, np.float32), 48000)
    with CodeStore.open(store, "a"):  # the daemon, say
        res = cvahash("index", rec, "--db", store, "--bundle", DEMO, ok=False)
    assert "systemctl stop cvahash" in res.stderr and "cvahash search" in res.stderr
    assert not PYTHON_ADVICE.search(res.stderr), res.stderr


def test_unknown_station_lists_the_stations_with_a_suggestion(store):
    res = cvahash("search", "owl", "--db", store, "--station", "ridge2", ok=False)
    assert "--station 'ridge2': no such station" in res.stderr
    assert "did you mean 'ridge-2'?" in res.stderr and "ridge-2 (4 windows)" in res.stderr
    assert res.stdout == ""


def test_an_empty_store_and_excluding_filters_are_told_apart(store, tmp_path):
    bundle = ModelBundle.open(DEMO)
    with CodeStore.create(tmp_path / "empty", bundle.bits, bundle.fingerprint):
        pass
    res = cvahash("search", "owl", "--db", tmp_path / "empty", "--bundle", DEMO, ok=True)
    assert "is empty" in res.stderr and "filters" not in res.stderr
    res = cvahash("search", "owl", "--db", store, "--since", "2025-01-01", ok=True)
    assert "no windows match --since 2025-01-01" in res.stderr
    assert "4 windows captured 2024-06-12 05:30:00Z .. 2024-06-12 05:30:31Z" in res.stderr
