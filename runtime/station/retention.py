"""Optional audio retention for the daemon: captured audio kept as FLAC under a quota.

Files are named by the UTC capture time of their first sample (``20240612_053000.flac``),
the form cvahash.model.audio.capture_time reads back, so retained audio can be re-indexed or
cut into clips later. When the folder exceeds its quota the oldest files are deleted
first; the codes of their windows stay in the store.

A full disk pauses retention and never stops the codes: retention keeps a reserve of
free space (``min_free_mb``) that is larger than what the store needs, and any write
error pauses retention instead of propagating.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)


class AudioRetention:
    def __init__(self, folder: Path, quota_mb: float, sample_rate: int = 48000,
                 min_free_mb: float = 500.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.quota_bytes = int(quota_mb * 1e6)
        self.min_free_bytes = int(min_free_mb * 1e6)
        self.sample_rate = sample_rate
        self.paused_reason: str | None = None
        self._file = None
        self.path: Path | None = None
        self.deleted = 0

    @property
    def state(self) -> str:
        return "paused" if self.paused_reason else "on"

    def open(self, start: datetime) -> Path | None:
        """Start a new file for audio beginning at `start`; None when retention is paused."""
        self.close()
        self._check_space()
        if self.paused_reason:
            return None
        path = self.folder / (start.strftime("%Y%m%d_%H%M%S") + ".flac")
        n = 1
        while path.exists():
            path = self.folder / (start.strftime("%Y%m%d_%H%M%S") + f"_{n}.flac")
            n += 1
        try:
            self._file = sf.SoundFile(str(path), "w", samplerate=self.sample_rate, channels=1,
                                      format="FLAC", subtype="PCM_16")
        except (OSError, RuntimeError) as exc:
            self._pause(f"cannot create {path}: {exc}")
            return None
        self.path = path
        return path

    def write(self, samples: np.ndarray) -> None:
        if self._file is None:
            return
        try:
            self._file.write(np.clip(samples, -1.0, 1.0))
        except (OSError, RuntimeError) as exc:
            self._pause(f"writing {self.path}: {exc}")

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except (OSError, RuntimeError) as exc:
                self._pause(f"closing {self.path}: {exc}")
            self.enforce_quota()

    def enforce_quota(self) -> None:
        """Delete the oldest retained files until the folder fits its quota."""
        files = sorted(self.folder.glob("*.flac"))  # names are capture times: oldest first
        sizes = {p: p.stat().st_size for p in files}
        total = sum(sizes.values())
        for p in files:
            if total <= self.quota_bytes:
                break
            if self._file is not None and p == self.path:
                continue
            try:
                p.unlink()
                total -= sizes.get(p, 0)
                self.deleted += 1
                log.info("retention: deleted %s (quota %.0f MB)", p.name, self.quota_bytes / 1e6)
            except OSError as exc:
                log.warning("retention: cannot delete %s: %s", p, exc)
        self._check_space()

    def _check_space(self) -> None:
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError as exc:
            self._pause(f"cannot check free space: {exc}")
            return
        if free < self.min_free_bytes:
            self._pause(f"only {free / 1e6:.0f} MB free (< {self.min_free_bytes / 1e6:.0f} MB)")
        elif self.paused_reason:
            # Space came back (or a write error may have been transient): try again.
            log.warning("retention: resumed, %.0f MB free", free / 1e6)
            self.paused_reason = None

    def _pause(self, reason: str) -> None:
        if self.paused_reason != reason:
            log.warning("retention paused, codes continue: %s", reason)
        self.paused_reason = reason
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except (OSError, RuntimeError):
                pass
