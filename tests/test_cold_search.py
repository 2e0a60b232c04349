"""What a cold `cvahash search` loads: the named command's module only, and none of the
audio reading stack for a text query (the time it takes is measured by
bench/cold_search.py, not here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cvahash.cli import COMMANDS, build_parser


def _commands(parser) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


@pytest.mark.parametrize("argv", [["search", "owl", "--db", "d"], ["-v", "search", "--help"],
                                  ["-vv", "--verbose", "search"]])
def test_a_named_command_registers_only_itself(argv):
    assert _commands(build_parser(argv)) == {"search"}


@pytest.mark.parametrize("argv", [None, [], ["--help"], ["nosuch", "x"], ["--version"],
                                  ["-q", "search"]])
def test_anything_else_registers_every_command(argv):
    every = _commands(build_parser(argv))
    assert {"search", "index", "info"} <= every
    assert every <= {name for name, _ in COMMANDS}


def test_an_unknown_command_is_refused_with_the_list(capsys):
    from cvahash.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serch", "owl"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'serch'" in err and "'search'" in err and "'index'" in err


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_search_path_imports_one_command_and_no_audio_reader():
    loaded = _modules_after(
        "from cvahash.cli import build_parser\n"
        "build_parser(['search', 'owl', '--db', 'x'])\n"
        "from cvahash.library.library import Library\n"
        "from cvahash.query import report\n"
        "from cvahash.query.search import search_text\n")
    commands = {m for m in loaded if m.startswith("cvahash.commands.")}
    assert "cvahash.commands.search" in commands
    assert not commands & {"cvahash.commands.index", "cvahash.commands.serve",
                           "cvahash.commands.train", "cvahash.commands.archive"}
    assert not loaded & {"soundfile", "soxr", "cvahash.model.audio", "matplotlib",
                         "torch"}
