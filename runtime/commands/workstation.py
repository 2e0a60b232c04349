"""How the workstation commands (train, eval, export) load ``cvahash.export``.

They import it inside ``with workstation_extra("train"):`` in their ``run`` function:
lazily, so the station never loads torch; library FutureWarnings are muted; and a
missing package (torch first) becomes a `MissingExtra` that names the install command.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import MissingExtra
from .wording import mute_library_future_warnings

INSTALL = "pip install '.[export]' in the cvahash checkout"


@contextmanager
def workstation_extra(command: str) -> Iterator[None]:
    """Around a command's imports of ``cvahash.export``: raise MissingExtra naming the
    extra when torch or another of its packages is not installed."""
    mute_library_future_warnings()
    # Checked first: some export modules import torch only when they run.
    if importlib.util.find_spec("torch") is None:
        raise MissingExtra(f"cvahash {command} needs the workstation extra (torch is "
                           f"missing): {INSTALL}")
    try:
        yield
    except ImportError as exc:
        raise MissingExtra(f"cvahash {command} needs the workstation extra ({exc.name} is "
                           f"missing): {INSTALL}") from exc
