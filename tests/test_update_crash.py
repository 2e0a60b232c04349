"""A power cut at any moment of `update apply` leaves the store as before or as after.

A child process applies a large update of many irregular windows (so the store's commit
writes many metadata rows) and is killed with SIGKILL at a random moment of the apply;
the store must then hold exactly its old content or exactly its old content plus the
whole update, with the update's tag recorded if and only if the rows are there. A second
apply must then complete it, and a third change nothing.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cvahash.store.code_store import CodeStore, Recording, Segment
from cvahash.update.apply import apply_update, build_update
from cvahash.update.format import generate_keypair, load_public_key, read_update

FP = "bundle-A"
ROWS = 4_000
KILLS = 12

# The child says when it starts the apply and when the apply reaches the store's append
# (the commit), so half of the kills can aim at the commit itself.
CHILD = """
import sys, time
from cvahash.store.code_store import CodeStore
from cvahash.update.apply import apply_update
append = CodeStore.append
def announced(self, *args, **kwargs):
    global t_append
    print("append", flush=True)
    t_append = time.monotonic()
    return append(self, *args, **kwargs)
CodeStore.append = announced
print("go", flush=True)
t = time.monotonic()
apply_update(sys.argv[1], sys.argv[2], [sys.argv[3]], create=len(sys.argv) > 4)
print("done", time.monotonic() - t, time.monotonic() - t_append, flush=True)
"""


def snapshot(path: Path, tag: str):
    with CodeStore.open(path, "r") as store:
        n = len(store)
        codes, windows = store.read(np.arange(n))
        return (codes.tobytes(),
                [(w.recording.path, w.offset_s, w.capture_utc, w.clock_source)
                 for w in windows],
                store.has_tag(tag))


@pytest.mark.slow
def test_sigkill_at_random_points_of_apply(tmp_path):
    rng = np.random.default_rng(7)
    key, pub = generate_keypair(tmp_path / "k")
    # Source: ROWS windows at irregular offsets, so each is its own segment.
    with CodeStore.create(tmp_path / "src", 128, FP, commit_every_windows=ROWS) as src:
        rec = Recording(path="/data/long.flac", station="ridge-2", content_hash="h")
        offsets = np.cumsum(rng.uniform(1.0, 3.0, ROWS))
        codes = rng.integers(0, 256, (ROWS, 16), dtype=np.uint8)
        src.append(codes, [Segment(recording=rec, first_offset_s=float(o), length_s=10.0,
                                   capture_start_utc=1.78e9 + float(o), n_rows=1,
                                   clock_source="gps") for o in offsets])
    update = tmp_path / "big.cvaup"
    build_update(tmp_path / "src", key, update)
    tag = f"update:{read_update(update, [load_public_key(pub)]).update_id}"

    # The station's store before the update: a few windows of its own.
    base = tmp_path / "base"
    with CodeStore.create(base, 128, FP) as store:
        store.append(rng.integers(0, 256, (5, 16), dtype=np.uint8),
                     Segment(recording=Recording(path="capture:x", station="marsh-1"),
                             first_offset_s=0.0, length_s=10.0, capture_start_utc=1.7e9,
                             hop_s=5.0, n_rows=5, clock_source="ntp"))
    before = snapshot(base, tag)
    done = tmp_path / "done"
    shutil.copytree(base, done)
    assert apply_update(update, done, [pub]).rows == ROWS
    after = snapshot(done, tag)
    assert before[2] is False and after[2] is True and len(after[1]) == 5 + ROWS

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

    def start(target, *create):
        return subprocess.Popen([sys.executable, "-c", CHILD, str(update), str(target),
                                 str(pub), *create], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    def expect(child, word):
        line = child.stdout.readline().strip()
        if line != word:
            child.kill()
            _, err = child.communicate(timeout=60)
            pytest.fail(f"the child said {line!r}, not {word!r}; its stderr:\n{err}")

    # How long an apply takes here, from the child's "go" to its end.
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    child = start(probe)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    apply_s, append_s = map(float, out.split()[-2:])

    outcomes = []
    chooser = random.Random(11)
    for i in range(KILLS):
        work = tmp_path / f"w{i}"
        shutil.copytree(base, work)
        child = start(work)
        expect(child, "go")
        if i % 2:  # aim at the commit
            expect(child, "append")
            time.sleep(chooser.uniform(0, append_s * 1.2))
        else:      # anywhere in the apply
            time.sleep(chooser.uniform(0, apply_s * 1.1))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        state = snapshot(work, tag)
        assert state in (before, after), (
            f"kill {i}: the store is between before and after: {len(state[1])} windows "
            f"(before {len(before[1])}, after {len(after[1])}), tag recorded: {state[2]}")
        outcomes.append("after" if state == after else "before")
        again = apply_update(update, work, [pub])
        assert again.already_applied == (state == after)
        assert snapshot(work, tag) == after
        shutil.rmtree(work)
    print(f"\nSIGKILL outcomes over {KILLS} kills (apply {apply_s:.2f} s, of which "
          f"append {append_s:.2f} s): "
          f"{outcomes.count('before')} before, {outcomes.count('after')} after")

    # --create: the store appears complete or not at all (it is built under a temporary
    # name); whatever a kill leaves behind, the next apply makes the complete store.
    for i in range(4):
        work = tmp_path / f"new{i}"
        child = start(work, "--create")
        expect(child, "go")
        if i % 2:
            expect(child, "append")
        time.sleep(chooser.uniform(0, append_s * 1.2 if i % 2 else apply_s * 1.1))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        if work.exists():  # the store appeared: then it is complete
            assert snapshot(work, tag)[1:] == (after[1][5:], True)
        apply_update(update, work, [pub], create=True)
        assert snapshot(work, tag)[1:] == (after[1][5:], True)
        shutil.rmtree(work)
