"""Folder entries that are not recordings (issue: one dangling link aborted a whole
`index`): each is skipped with its own reason and the rest of the folder is indexed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from cvahash.library.index import entry_problem, find_recordings, index_recordings
from cvahash.model.frontend import FrontendParams
from cvahash.store.code_store import CodeStore


class Bundle:
    """What indexing needs of a bundle: 64-bit codes from the mean log-mel, in numpy."""

    bits = 64
    fingerprint = "entries0entries0"
    path = Path("/nonexistent/bundle")

    def __init__(self):
        self.frontend_params = FrontendParams()
        self.w = np.random.default_rng(0).standard_normal((64, 64))

    def encode_audio(self, features):
        x = features[:, 0].astype(np.float64).mean(axis=1)
        return np.packbits((x - x.mean(axis=1, keepdims=True)) @ self.w > 0, axis=1)


def _tone(path: Path, seconds: float) -> Path:
    t = np.arange(round(seconds * 16000)) / 16000
    sf.write(path, (0.2 * np.sin(2 * np.pi * 700 * t)).astype(np.float32), 16000,
             subtype="PCM_16")
    return path


def test_links_loops_fifos_are_skipped_with_reasons_and_the_rest_indexed(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    good = _tone(rec / "good.wav", 12.0)
    (rec / "dangling.wav").symlink_to(rec / "gone.wav")
    (rec / "loop_a.wav").symlink_to(rec / "loop_b.wav")
    (rec / "loop_b.wav").symlink_to(rec / "loop_a.wav")
    os.mkfifo(rec / "pipe.wav")
    (rec / "dev.wav").symlink_to("/dev/null")

    assert entry_problem(good) is None
    files = find_recordings([rec])
    assert set(files) == {good, *(rec / n for n in ("dangling.wav", "loop_a.wav",
                                                    "loop_b.wav", "pipe.wav", "dev.wav"))}
    with CodeStore.create(tmp_path / "db", Bundle.bits, Bundle.fingerprint) as store:
        report = index_recordings(files, store, Bundle())
        assert report.indexed == [good] and report.windows == 2 and len(store) == 2
    reasons = {s.path.name: s.reason for s in report.skipped}
    assert "dangling symbolic link" in reasons["dangling.wav"]
    assert "symbolic link loop" in reasons["loop_a.wav"]
    assert "symbolic link loop" in reasons["loop_b.wav"]
    assert "FIFO" in reasons["pipe.wav"]
    assert "device" in reasons["dev.wav"]
    assert all(str(rec) in r for r in reasons.values())
    assert report.exit_code == 3


def test_a_broken_link_named_on_the_command_line_is_skipped_not_fatal(tmp_path):
    good = _tone(tmp_path / "good.wav", 3.0)
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "nowhere.wav")
    files = find_recordings([good, tmp_path / "dangling.wav"])
    with CodeStore.create(tmp_path / "db", Bundle.bits, Bundle.fingerprint) as store:
        report = index_recordings(files, store, Bundle())
    assert report.indexed == [good]
    assert [s.path.name for s in report.skipped] == ["dangling.wav"]
