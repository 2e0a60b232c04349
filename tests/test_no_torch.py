"""The device runtime never imports torch, transformers, peft or onnx.

A subprocess blocks those packages on ``sys.meta_path`` (as if they were not installed),
imports every runtime module, runs ``cvahash --help``, ``index``, ``search`` (text and by
example, with clips and spectrograms) and ``info`` on a tiny bundle, and reports what
ended up in ``sys.modules``. The bundle itself is made beforehand with the workstation
toolchain in this (torch-having) process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

BLOCKED = ("torch", "transformers", "peft", "onnx")

SCRIPT = r"""
import importlib, json, pkgutil, sys

BLOCKED = set(sys.argv[1].split(","))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Blocker())

import cvahash
failed_imports = {}
for m in pkgutil.walk_packages(cvahash.__path__, "cvahash."):
    if m.name in ("cvahash.export", "cvahash.__main__") or m.name.startswith("cvahash.export."):
        continue
    try:
        importlib.import_module(m.name)
    except Exception as e:  # report, don't stop: the assertion names the module
        failed_imports[m.name] = f"{type(e).__name__}: {e}"

from cvahash.cli import main
rec, db, bundle, out = sys.argv[2:6]
rcs = {}
try:
    main(["--help"])
except SystemExit as e:
    rcs["help"] = e.code
rcs["index"] = main(["index", rec, "--db", db, "--bundle", bundle, "--quiet"])
rcs["search"] = main(["search", "a wren singing", "--db", db, "-k", "2", "--json",
                      "--clips", out + "/clips", "--spectrograms", out + "/spec"])
rcs["like"] = main(["search", "--like", rec + "/a.wav@5", "--db", db, "-k", "2"])
rcs["info"] = main(["info", "--db", db])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("RESULT " + json.dumps({"rcs": rcs, "loaded": loaded, "failed_imports": failed_imports}))
"""


def test_runtime_runs_without_torch_transformers_peft_onnx(tiny_bundle, tmp_path):
    bundle = tiny_bundle
    rec = tmp_path / "rec"
    rec.mkdir()
    rng = np.random.default_rng(0)
    sf.write(rec / "a.wav", (0.1 * rng.standard_normal(15 * 48000)).astype(np.float32), 48000)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BLOCKED), str(rec), str(tmp_path / "db"),
         str(bundle), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["failed_imports"] == {}, result["failed_imports"]
    assert result["rcs"] == {"help": 0, "index": 0, "search": 0, "like": 0, "info": 0}, \
        proc.stderr[-3000:]
    assert result["loaded"] == []
    assert len(list((tmp_path / "out" / "clips").iterdir())) == 2
    assert len(list((tmp_path / "out" / "spec").iterdir())) == 2
    assert Path(tmp_path / "db" / "indexed-with.json").is_file()


WORKSTATION_SCRIPT = r"""
import importlib.util, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "peft", "onnx"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)",
                                      name=name)
        return None

sys.meta_path.insert(0, Blocker())
_real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "torch" else _real(name, *a)
from cvahash.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_workstation_commands_name_the_extra_without_torch(tmp_path):
    """train, eval and export without torch: exit 1 and the install command, no traceback."""
    for argv in (["train", "--data", "m.jsonl", "--out", "run"],
                 ["eval", "run", "--data", "m.jsonl"], ["export", "run", "--out", "bundle"]):
        proc = subprocess.run([sys.executable, "-c", WORKSTATION_SCRIPT, *argv],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              check=False)
        assert proc.returncode == 1, (argv, proc.stderr)
        assert f"cvahash {argv[0]} needs the workstation extra (torch is missing)" in proc.stderr
        assert "pip install '.[export]'" in proc.stderr and "Traceback" not in proc.stderr
