"""Library messages in command-line words.

The store and model layers are also a Python API, and some of their errors say what a
Python caller should do (``open the store with mode="r"``). A station user types
commands, so `cvahash.cli` passes every error through `in_cli_words` before printing it:
each phrase below is replaced by the command or flag that does the same.
"""

from __future__ import annotations

import re

# (pattern in a library message, what a command-line user should read instead)
REWORDED: list[tuple[re.Pattern, str]] = [
    (re.compile(r"stop it or open the store with mode=\"r\""),
     "stop it first (a running daemon: `systemctl stop cvahash`), or only read the store "
     "meanwhile (`cvahash search`, `cvahash info`)"),
    (re.compile(r"create one with CodeStore\.create or check the \[store\] path"),
     "make one with `cvahash index RECORDINGS --db DIR --bundle BUNDLE` (or "
     "`cvahash update apply ... --create`), or check the --db / [store] path"),
    (re.compile(r"open it (?:with )?mode=\"a\"(?: to append)?"),
     "this command only reads the store; use a command that writes it "
     "(`cvahash index`, `cvahash update apply`)"),
    (re.compile(r"pip install 'cvahash\[(\w+)\]'"),
     r"pip install '.[\1]' in the cvahash checkout"),
]


def in_cli_words(message: str) -> str:
    """``message`` with Python-API advice replaced by the command or flag to use."""
    for pattern, words in REWORDED:
        message = pattern.sub(words, message)
    return message


# Libraries of the workstation commands whose FutureWarnings (deprecations inside their
# own code, nothing a user of cvahash can change) are not shown.
QUIET_LIBRARIES = r"(transformers|torch|peft|onnx|onnxscript|onnxruntime)(\.|$)"


def mute_library_future_warnings() -> None:
    """Hide FutureWarnings raised inside QUIET_LIBRARIES (train, eval, export)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=QUIET_LIBRARIES)
