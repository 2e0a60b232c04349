"""What a cold `cvahash search` loads: the named command's module only, and none of the
audio reading stack for a text query (the time it takes is measured by
bench/cold_search.py, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cvahash.cli import COMMANDS, build_parser

DEMO = Path(__file__).parent / "data" / "demo-bundle"


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


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    import numpy as np
    import soundfile as sf

    root = tmp_path_factory.mktemp("cold")
    rec = root / "rec.wav"
    rng = np.random.default_rng(5)
    sf.write(rec, (rng.standard_normal(48000 * 300) * 0.1).astype(np.float32), 48000)
    subprocess.run([sys.executable, "-m", "cvahash", "index", str(rec), "--db",
                    str(root / "db"), "--bundle", str(DEMO), "--quiet", "--threads", "1"],
                   check=True)
    return root / "db"


def _search(*args: str, **kwargs):
    return subprocess.run([sys.executable, "-m", "cvahash", "search", *args],
                          capture_output=True, text=True, **kwargs)


def test_search_output_is_complete_without_the_teardown(demo_store):
    """`search` ends the process without the interpreter's teardown: the output must
    still be whole, and the exit codes those of the command."""
    big = _search("owl hooting", "--db", str(demo_store), "-k", "30", "--json")
    assert big.returncode == 0, big.stderr
    doc = json.loads(big.stdout)  # every byte of the document arrived
    assert len(doc["hits"]) == 30 and doc["hits"][-1]["rank"] == 30
    table = _search("owl hooting", "--db", str(demo_store), "-k", "3")
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 4  # header + 3
    none = _search("owl", "--db", str(demo_store), "--since", "2199-01-01")
    assert none.returncode == 0 and none.stdout == "" and "no windows match" in none.stderr
    bad = _search("owl", "--db", str(demo_store), "--station", "nowhere")
    assert bad.returncode == 1 and "records no station names" in bad.stderr


def test_search_into_a_closed_pipe_ends_quietly(demo_store):
    head = subprocess.run(f"{sys.executable} -m cvahash search 'owl hooting' --db "
                          f"{demo_store} -k 30 | head -c 20", shell=True,
                          capture_output=True, text=True)
    assert head.returncode == 0 and len(head.stdout) == 20
    assert "Traceback" not in head.stderr
