"""Device configs: every shipped file loads, every key is checked, errors name file and key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

from cvahash.cli import main
from cvahash.errors import ConfigError
from cvahash.station.config import SCHEMA, WATCH_SCHEMA, DeviceConfig, load_config, loads_config

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "device_configs").glob("*.toml"))

MINIMAL = """
[device]
name = "test"
[runtime]
bundle = "bundle"
[store]
path = "store"
"""


def problems_of(text: str, name: str = "station.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads_config(text, name=name, base_dir="/base")
    return info.value.problems


def test_the_five_targets_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"rpi4", "rpi5", "rpi-zero-2w", "jetson-orin-nano", "x86-station"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_matches_its_file(path):
    config = load_config(path)
    assert isinstance(config, DeviceConfig) and config.source == path
    assert config.windows.hop_s <= config.windows.window_s
    assert config.runtime.execution_providers[-1] == "CPUExecutionProvider"
    # Independent reading of the same file: every value written there comes back as is.
    raw = tomllib.loads(path.read_text())
    as_dict = config.to_dict()
    for section, table in raw.items():
        if section == "watchlist":
            for entry, got in zip(table, as_dict["watchlist"], strict=True):
                for key, value in entry.items():
                    assert got[key] == value, (path.name, "watchlist", key)
            continue
        for key, value in table.items():
            assert as_dict[section][key] == value, (path.name, section, key)
    # Shipped configs are examples: they spell out every key of every section.
    for section, schema in SCHEMA.items():
        assert {k for k, _, _ in schema} == set(raw[section]), (path.name, section)
    json.dumps(as_dict)  # JSON-ready


def test_shipped_configs_fit_their_hardware():
    by_name = {p.stem: load_config(p) for p in SHIPPED}
    assert by_name["rpi4"].runtime.threads == 4
    assert by_name["rpi4"].runtime.precision == "int8"
    assert by_name["rpi-zero-2w"].runtime.threads <= 2  # 512 MB RAM
    jetson = by_name["jetson-orin-nano"].runtime
    assert jetson.precision == "fp16"
    assert jetson.execution_providers.index("CUDAExecutionProvider") < \
        jetson.execution_providers.index("CPUExecutionProvider")
    assert by_name["x86-station"].runtime.threads == 0
    assert len({c.device.name for c in by_name.values()}) == len(by_name)


def test_docs_describe_every_key():
    doc = (REPO / "docs" / "configuration.md").read_text()
    for section, schema in SCHEMA.items():
        assert f"[{section}]" in doc
        for key, _, _ in schema:
            assert f"`{key}`" in doc, (section, key)
    for key, _, _ in WATCH_SCHEMA:
        assert f"`{key}`" in doc, ("watchlist", key)


def test_minimal_config_gets_documented_defaults():
    config = loads_config(MINIMAL, base_dir="/base")
    assert config.runtime.bundle == Path("/base/bundle")
    assert config.store.path == Path("/base/store")
    assert config.capture.sample_rate == 48000 and config.capture.device == "default"
    assert config.windows.window_s == 10.0 and config.windows.hop_s == 5.0
    assert config.runtime.execution_providers == ("CPUExecutionProvider",)
    assert config.retention.enabled is False and config.watchlist == ()


def test_message_names_file_section_key_expectation_value_and_line():
    text = MINIMAL + '[capture]\nsample_rate = "fast"\n'
    assert problems_of(text, "device_configs/rpi4.toml") == [
        ("device_configs/rpi4.toml: [capture] sample_rate: expected an integer from 8000 "
         "to 384000, got 'fast' (line 9)")]


@pytest.mark.parametrize("section,key", [(s, k) for s, sch in SCHEMA.items() for k, _, _ in sch])
def test_every_key_rejects_a_wrong_type(section, key):
    raw = tomllib.loads(MINIMAL)
    raw.setdefault(section, {})[key] = {"nested": 1}  # no key accepts a table
    text = "\n".join(
        f"[{s}]\n" + "\n".join(f"{k} = {{ nested = 1 }}" if v == {"nested": 1} else
                               f"{k} = {json.dumps(v)}" for k, v in t.items())
        for s, t in raw.items())
    found = problems_of(text)
    assert len(found) == 1
    assert found[0].startswith(f"station.toml: [{section}] {key}: expected"), found


@pytest.mark.parametrize("section,line,expected", [
    ("runtime", "threads = -1", "[runtime] threads: expected an integer from 0 to 256, got -1"),
    ("runtime", "threads = true", "[runtime] threads: expected an integer"),
    ("runtime", 'precision = "int4"', "expected one of 'int8', 'fp16', 'fp32'"),
    ("runtime", "execution_providers = []", "[runtime] execution_providers: expected a non-empty"),
    ("runtime", 'execution_providers = ["CUDAExecutionProvder"]',
     "did you mean 'CUDAExecutionProvider'?"),
    ("runtime", 'execution_providers = ["CPUExecutionProvider", "CPUExecutionProvider"]',
     "at most once"),
    ("capture", "channels = 0", "[capture] channels: expected an integer from 1 to 64"),
    ("capture", "device = -1", "[capture] device: expected"),
    ("capture", 'latency = "medium"', "[capture] latency: expected"),
    ("windows", "hop_s = 0", "[windows] hop_s: expected a number greater than 0"),
    ("windows", "window_s = nan", "[windows] window_s: expected a number"),
    ("store", "commit_every_windows = 0", "[store] commit_every_windows: expected"),
    ("retention", 'format = "mp3"', "[retention] format: expected one of 'flac'"),
    ("logging", 'level = "verbose"', "[logging] level: expected one of"),
])
def test_out_of_range_values_are_refused(section, line, expected):
    text = MINIMAL + f"[{section}]\n{line}\n" if section not in ("runtime", "store") else \
        MINIMAL.replace(f"[{section}]\n", f"[{section}]\n{line}\n")
    found = problems_of(text)
    assert len(found) == 1 and expected in found[0], found


def test_unknown_keys_and_sections_are_errors_with_suggestions():
    text = MINIMAL.replace("[store]\n", "[store]\ncommit_intrval_s = 5\n") + \
        "[captur]\nchannels = 1\nthreads = 4\n"
    found = problems_of(text)
    assert any("[store] unknown key 'commit_intrval_s' (did you mean 'commit_interval_s'?)" in p
               for p in found)
    assert any("unknown section 'captur' (did you mean 'capture'?)" in p for p in found)
    top = problems_of("threads = 4\n" + MINIMAL)
    assert top == [("station.toml: (top level) unknown key 'threads' "
                    "(it belongs in a section: [runtime] threads) (line 1)")]


def test_hop_longer_than_window_is_refused():
    found = problems_of(MINIMAL + "[windows]\nwindow_s = 5\nhop_s = 6\n")
    assert len(found) == 1 and "[windows] hop_s: expected at most window_s (5), got 6" in found[0]


def test_missing_required_sections_and_keys():
    found = problems_of('[device]\ndescription = "x"\n')
    assert any("[device] name: missing" in p for p in found)
    assert any("[runtime] missing" in p for p in found)
    assert any("[store] missing" in p for p in found)


def test_all_problems_are_reported_at_once():
    text = MINIMAL + '[capture]\nsample_rate = 1\nchannels = "two"\n[logging]\nlevel = 3\n'
    assert len(problems_of(text)) == 3


def test_watchlist_entries():
    ok = loads_config(MINIMAL + '[[watchlist]]\nname = "owl"\nquery = "tawny owl call"\n'
                      'radius = 12\ncommand = "notify-send \'owl heard\'"\n', base_dir="/b")
    entry = ok.watchlist[0]
    assert entry.command == ("notify-send", "owl heard") and entry.cooldown_s == 60.0
    found = problems_of(MINIMAL + '[[watchlist]]\nname = "a"\nquery = "q"\nradius = 300\n'
                        '[[watchlist]]\nname = "a"\nquery = "q"\nradius = 3\n'
                        'colldown_s = 1\n')
    assert any("[watchlist #1 'a'] radius: expected an integer from 0 to 256, got 300 (line 11)"
               in p for p in found)
    assert any("[watchlist #2 'a'] unknown key 'colldown_s' (did you mean 'cooldown_s'?)"
               in p for p in found)
    assert any("names must be unique" in p for p in found)
    with pytest.raises(ConfigError, match=r"\[watchlist #1\] radius: expected an integer from "
                                          r"0 to 64 \(the bundle's code width\), got 65"):
        loads_config(MINIMAL + '[[watchlist]]\nname = "x"\nquery = "q"\nradius = 65\n'
                     ).check_bits(64)


def test_retention_needs_its_own_path_when_enabled():
    found = problems_of(MINIMAL + "[retention]\nenabled = true\n")
    assert found == [("station.toml: [retention] path: missing (required when enabled = true) "
                      "(line 9)")]
    found = problems_of(MINIMAL + '[retention]\nenabled = true\npath = "store/audio"\n')
    assert "inside the code store" in found[0]


def test_relative_paths_resolve_against_the_file_or_base_dir(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "s.toml").write_text(MINIMAL + '[status]\npath = "~/status.json"\n')
    config = load_config(folder / "s.toml")
    assert config.store.path == folder.resolve() / "store"
    assert config.status.path == Path.home() / "status.json"
    assert load_config(folder / "s.toml", base_dir="/srv").runtime.bundle == Path("/srv/bundle")


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[device]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[device\nname = 1\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML: .*line 1"):
        load_config(broken)


def test_config_is_frozen():
    config = loads_config(MINIMAL)
    with pytest.raises(AttributeError):
        config.runtime.threads = 3


def test_cli_check(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + '[capture]\nsample_rate = "fast"\n')
    assert main(["config", "check", "--file-only", *map(str, SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert out.count("OK ") == len(SHIPPED)
    assert main(["config", "check", "--file-only", str(SHIPPED[0]), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"OK {SHIPPED[0]}")
    assert re.search(r"bad.toml: \[capture\] sample_rate: expected an integer", captured.err)
    assert main(["config", "show", str(SHIPPED[0])]) == 0
    assert json.loads(capsys.readouterr().out)["device"]["name"]


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_a_config_or_a_config_error(text):
    try:
        loads_config(text)
    except ConfigError as exc:
        assert str(exc)


def test_commit_interval_defaults_to_10_s_and_the_old_name_still_reads():
    assert loads_config(MINIMAL).store.commit_interval_s == 10.0
    old = MINIMAL.replace("[store]\n", "[store]\ncommit_every_s = 42\n")
    assert loads_config(old).store.commit_interval_s == 42.0
    both = MINIMAL.replace("[store]\n", "[store]\ncommit_every_s = 4\ncommit_interval_s = 5\n")
    assert any("commit_every_s: the old name of commit_interval_s" in p
               for p in problems_of(both))


def test_config_check_finds_what_the_daemon_would_refuse_in_the_same_words(tmp_path):
    """Radius wider than the bundle, an alert command that cannot run, a path that cannot
    be written: `config check` lists them all, and the daemon refuses to start with the
    same lines."""
    import subprocess
    import sys

    demo = Path(__file__).parent / "data" / "demo-bundle"  # 64-bit codes, int8
    (tmp_path / "a-file").write_text("not a folder")
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\nexit 0\n")  # not executable (yet)
    cfg = tmp_path / "station.toml"
    body = f"""
[device]
name = "ridge-2"
[runtime]
bundle = "{demo}"
[store]
path = "{tmp_path / 'a-file' / 'store'}"
[status]
path = "{tmp_path / 'status.json'}"
[[watchlist]]
name = "owl"
query = "owl hooting"
radius = 100
command = ["{script}"]
[[watchlist]]
name = "frog"
query = "frog chorus"
radius = 3
command = "no-such-alert-program --loud"
"""
    cfg.write_text(body)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cvahash", *map(str, args)],
                              capture_output=True, text=True, timeout=120, check=False)

    assert run("config", "check", "--file-only", cfg).returncode == 0
    res = run("config", "check", cfg)
    assert res.returncode == 1
    problems = [ln for ln in res.stderr.splitlines() if ln.startswith(str(cfg))]
    expected = [
        "[watchlist #1] radius: expected an integer from 0 to 64 (the bundle's code width), "
        "got 100",
        f"[watchlist #1 'owl'] command: '{script}' is not an executable file (make it one: "
        f"chmod +x {script})",
        "[watchlist #2 'frog'] command: 'no-such-alert-program' is not a program on PATH",
        f"[store] path: {tmp_path / 'a-file' / 'store'}: {tmp_path / 'a-file'} is a file, "
        "not a folder",
    ]
    for want in expected:
        assert sum(want in p for p in problems) == 1, (want, problems)
    assert len(problems) == 5  # the alerts log beside the store cannot be written either

    daemon = run("daemon", "--config", cfg, "--source", f"file:{cfg}")
    assert daemon.returncode == 1
    assert [ln for ln in daemon.stderr.splitlines() if ln.startswith(str(cfg))] == problems[1:]
    assert problems[0] in daemon.stderr

    script.chmod(0o755)
    fixed = body.replace("radius = 100", "radius = 10").replace(
        str(tmp_path / "a-file" / "store"), str(tmp_path / "store")).replace(
        "no-such-alert-program", "true")
    cfg.write_text(fixed)
    res = run("config", "check", cfg)
    assert res.returncode == 0 and "bundle, commands and paths checked" in res.stdout, res.stderr
