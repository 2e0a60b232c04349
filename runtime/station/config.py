"""A station's device config: one TOML file, validated as a whole before anything runs.

`load_config(path)` reads a file such as ``device_configs/rpi4.toml`` and returns a frozen
`DeviceConfig`; `loads_config(text)` does the same for a string. Every key is checked for
type and range, keys that belong together are checked against each other (``hop_s`` at
most ``window_s``), and an unknown key or section is an error with a "did you mean"
suggestion, because a typo such as ``sample_rte`` must not silently fall back to a
default on a station nobody will visit for months.

All problems in a file are collected and raised together as one `ConfigError`; each line
names the file, the section and key, what was expected and what was found, and the line
when it can be located, e.g.::

    device_configs/rpi4.toml: [capture] sample_rate: expected an integer from 8000 to
    384000, got 'fast' (line 14)

The error's ``problems`` attribute holds the lines as a list.

Relative paths (``[runtime] bundle``, ``[store] path``, ``[retention] path``,
``[status] path``) resolve against the config file's folder, or against ``base_dir``
when one is given; ``~`` expands to the home folder of the user who loads the config.
Loading never touches those paths: a config can be checked on a workstation before
the card goes into the station. docs/configuration.md describes every key.

The model's code width is not in the config (it lives in the bundle's manifest), so a
watch radius is checked against the widest code (256 bits) here and against the real
width by `DeviceConfig.check_bits` once the bundle is known.

Why one long module: the schema (every section and key with its type, range and
default) is one table that docs/configuration.md mirrors; the checks, the "did you
mean" suggestions and the frozen dataclasses read it together, and splitting them
would scatter one contract over several files.
"""

from __future__ import annotations

import difflib
import getpass
import math
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..limits import MAX_CODE_BITS
from ..limits import is_int as _is_int  # TOML true is no 1
from ..safeio import UnsafeFile, kind_of, read_capped, toml_depth, write_problem

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

MAX_BITS = MAX_CODE_BITS  # the widest code a bundle may produce
# A real config is a few KiB with tables three deep ([[watchlist]] in the file); these
# bound what a damaged or hostile file (``/dev/zero``, ``a=[[[[...]]]]``) can cost.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_DEPTH = 16

# Every provider name onnxruntime knows (onnxruntime.get_all_providers() in 1.32, plus
# names older releases used): a name outside this list is a typo, not a missing build.
# Whether a provider is *available* on the station is the runtime's business.
KNOWN_EXECUTION_PROVIDERS = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
    "XnnpackExecutionProvider", "OpenVINOExecutionProvider", "DnnlExecutionProvider",
    "ACLExecutionProvider", "ArmNNExecutionProvider", "QNNExecutionProvider",
    "NnapiExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider",
    "ROCMExecutionProvider", "MIGraphXExecutionProvider", "VitisAIExecutionProvider",
    "RknpuExecutionProvider", "VSINPUExecutionProvider", "CANNExecutionProvider",
    "WebGpuExecutionProvider", "WebNNExecutionProvider", "JsExecutionProvider",
    "AzureExecutionProvider",
)
PRECISIONS = ("int8", "fp16", "fp32")
RETENTION_FORMATS = ("flac",)  # what cvahash.station.retention writes
LOG_LEVELS = ("debug", "info", "warning", "error")


# ---------------------------------------------------------------------------------------
# The config as the daemon sees it


@dataclass(frozen=True)
class DeviceInfo:
    """[device]: what this station is called in logs, status files and merged stores."""
    name: str
    description: str


@dataclass(frozen=True)
class RuntimeSettings:
    """[runtime]: how the models run. ``threads`` 0 means one per core."""
    threads: int
    execution_providers: tuple[str, ...]
    precision: str
    bundle: Path


@dataclass(frozen=True)
class CaptureSettings:
    """[capture]: the input device, opened at its native rate (resampling comes later)."""
    device: str | int
    sample_rate: int
    channels: int
    blocksize: int
    latency: str | float
    buffer_s: float


@dataclass(frozen=True)
class WindowSettings:
    """[windows]: each code covers ``window_s`` seconds; a new window starts every ``hop_s``."""
    window_s: float
    hop_s: float


@dataclass(frozen=True)
class StoreSettings:
    """[store]: the code store, committed after N windows or when the oldest uncommitted
    window's audio ended ``commit_interval_s`` seconds ago, whichever comes first."""
    path: Path
    commit_every_windows: int
    commit_interval_s: float


@dataclass(frozen=True)
class RetentionSettings:
    """[retention]: keep captured audio (oldest deleted first) within ``quota_mb``."""
    enabled: bool
    path: Path | None
    quota_mb: int
    format: str


@dataclass(frozen=True)
class WatchEntry:
    """One [[watchlist]] entry: a standing query that alerts within ``radius`` bits.

    ``command`` is an argv list run without a shell, or None for log-only alerts.
    """
    name: str
    query: str
    radius: int
    command: tuple[str, ...] | None
    cooldown_s: float


@dataclass(frozen=True)
class StatusSettings:
    """[status]: a small JSON health file rewritten every ``interval_s`` seconds."""
    path: Path
    interval_s: float


@dataclass(frozen=True)
class LoggingSettings:
    """[logging]: the level of the daemon's log on stderr (journald)."""
    level: str


@dataclass(frozen=True)
class WebSettings:
    """[web]: the station web page (``cvahash serve``). Any ``listen`` address other than
    loopback needs the password in ``password_file`` (set with ``cvahash web passwd``)."""
    listen: str
    port: int
    password_file: Path
    audio_roots: tuple[Path, ...]
    threads: int


@dataclass(frozen=True)
class NotifySettings:
    """[notify]: where watchlist alerts go besides alerts.jsonl (MQTT, Apprise URLs)."""
    mqtt: str
    mqtt_topic: str
    apprise: tuple[str, ...]
    retry_s: float


@dataclass(frozen=True)
class DeviceConfig:
    """A validated station config. ``source`` is the file it came from (None for text)."""
    device: DeviceInfo
    runtime: RuntimeSettings
    capture: CaptureSettings
    windows: WindowSettings
    store: StoreSettings
    retention: RetentionSettings
    watchlist: tuple[WatchEntry, ...]
    status: StatusSettings
    logging: LoggingSettings
    source: Path | None = None
    web: WebSettings | None = None
    notify: NotifySettings | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: paths as strings, tuples as lists, ``source`` left out."""
        def plain(value):
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "source" or value is None:
                continue
            out[f.name] = plain([asdict(v) for v in value] if f.name == "watchlist"
                                else asdict(value))
        return out

    def check_bits(self, bits: int) -> None:
        """Raise ConfigError if a watch radius exceeds the bundle's code width ``bits``."""
        problems = self._bits_problems(bits)
        if problems:
            raise _error(problems)

    def _bits_problems(self, bits: int) -> list[str]:
        where = str(self.source) if self.source else "<config>"
        return [
            f"{where}: [watchlist #{i}] radius: expected an integer from 0 to {bits} "
            f"(the bundle's code width), got {entry.radius}"
            for i, entry in enumerate(self.watchlist, 1) if entry.radius > bits
        ]

    def station_problems(self, bundle, alerts_log: Path | None = None) -> list[str]:
        """What the daemon would refuse at start on this machine, beyond the file itself:
        a bundle of another precision, a watch radius wider than the bundle's ``bits``, an
        alert command that is not an executable file, a path the daemon cannot write.
        ``bundle``: the opened model bundle (``bits``, ``precision``, ``path``);
        ``alerts_log``: the daemon's --alerts file (default: alerts.jsonl beside the
        store). The same lines serve `cvahash config check` and the daemon's start."""
        where = str(self.source) if self.source else "<config>"
        problems = []
        if bundle.precision != self.runtime.precision:
            problems.append(
                f"{where}: [runtime] precision is {self.runtime.precision!r} but the bundle "
                f"{bundle.path} is {bundle.precision!r}; install a bundle exported with "
                f"--precision {self.runtime.precision} or change the config")
        problems += self._bits_problems(bundle.bits)
        for i, entry in enumerate(self.watchlist, 1):
            if entry.command and (why := _not_executable(entry.command[0])):
                problems.append(f"{where}: [watchlist #{i} {entry.name!r}] command: "
                                f"{entry.command[0]!r} {why}")
        folders = [("[store] path", self.store.path, self.store.path),
                   ("[status] path", self.status.path, self.status.path.parent)]
        if self.retention.enabled and self.retention.path is not None:
            folders.append(("[retention] path", self.retention.path, self.retention.path))
        if self.watchlist and alerts_log is not None:
            folders.append(("--alerts", Path(alerts_log), Path(alerts_log).parent))
        elif self.watchlist:
            folders.append(("[store] path (the alerts log beside the store)",
                            self.store.path.parent / "alerts.jsonl", self.store.path.parent))
        for key, shown, folder in folders:
            if why := _not_writable(folder):
                problems.append(f"{where}: {key}: {shown}: {why}")
        # The files themselves: the daemon writes only regular files it creates, never
        # through a symlink or onto a device (cvahash.safeio.open_new_or_regular).
        files = [("[status] path", self.status.path)]
        if self.watchlist:
            files.append(("--alerts" if alerts_log is not None else "[store] path (the "
                          "alerts log beside the store)",
                          Path(alerts_log) if alerts_log is not None
                          else self.store.path.parent / "alerts.jsonl"))
        for key, path in files:
            if why := write_problem(path):
                problems.append(f"{where}: {key}: {path}: {why}")
        if self.retention.enabled and self.retention.path is not None:
            if why := _not_a_folder(self.retention.path):
                problems.append(f"{where}: [retention] path: {self.retention.path}: {why}")
        return problems

    def check_station(self, bundle, alerts_log: Path | None = None) -> None:
        """Raise ConfigError with every `station_problems` line, if any."""
        problems = self.station_problems(bundle, alerts_log)
        if problems:
            raise _error(problems)


def _not_executable(program: str) -> str | None:
    """Why ``program`` (an alert command's argv[0]) cannot be run, or None."""
    if "/" not in program:
        if shutil.which(program) is None:
            return ("is not a program on PATH; give the full path of an executable file "
                    "(e.g. /usr/local/bin/notify.sh)")
        return None
    path = Path(program)
    if not path.is_file():
        return "does not exist" if not path.exists() else "is not a file"
    if not os.access(path, os.X_OK):
        return f"is not an executable file (make it one: chmod +x {program})"
    return None


def _not_a_folder(path: Path) -> str | None:
    """Why ``path`` is no folder the daemon may write audio into (it is a symlink or
    something other than a folder), or None (a folder, or absent: made at start)."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    return (f"is {kind_of(st.st_mode)}, not a folder; give a folder for retained audio")


def _not_writable(folder: Path) -> str | None:
    """Why the daemon could not create files in ``folder`` (made if missing), or None.
    Tries for real in the nearest existing folder: permission bits say nothing about a
    read-only card or a root-owned mount."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder; choose another path"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cvahash-check-"):
            pass
    except OSError as exc:
        user = getpass.getuser()
        return (f"cannot write in {existing} as user {user} ({exc.strerror or exc}); "
                f"fix its owner or permissions (sudo chown {user} {existing}) or choose "
                "another path")
    return None


# ---------------------------------------------------------------------------------------
# Value checks: each takes the TOML value and returns the converted one, or raises _Bad
# with the "expected ..." part of the message.


class _Bad(Exception):
    pass


_REQUIRED = object()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and not math.isnan(value)


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value):
        if not _is_int(value) or not lo <= value <= hi:
            raise _Bad(f"expected an integer from {lo} to {hi}")
        return value
    return check


def number(lo: float, hi: float, *, above: bool = False) -> Callable[[Any], float]:
    """A float in [lo, hi], or (lo, hi] with ``above``; TOML integers are accepted."""
    def check(value):
        ok = _is_number(value) and (value > lo if above else value >= lo) and value <= hi
        if not ok:
            low = f"greater than {lo:g}" if above else f"from {lo:g}"
            raise _Bad(f"expected a number {low} {'and at most' if above else 'to'} {hi:g}")
        return float(value)
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad("expected true or false")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad("expected a string")
    return value


def nonempty_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad("expected a non-empty string")
    return value


def choice(*options: str) -> Callable[[Any], str]:
    def check(value):
        if value not in options:
            listed = ", ".join(repr(o) for o in options)
            raise _Bad(f"expected one of {listed}{_did_you_mean(value, options)}")
        return value
    return check


def capture_device(value: Any) -> str | int:
    if _is_int(value) and value >= 0:
        return value
    if isinstance(value, str) and value.strip():
        return value
    raise _Bad('expected "default", a device name, or a device index (an integer >= 0)')


def latency(value: Any) -> str | float:
    if value in ("low", "high"):
        return value
    if _is_number(value) and 0 < value <= 10:
        return float(value)
    raise _Bad("expected \"low\", \"high\" or a number of seconds greater than 0 and at most 10")


def execution_providers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _Bad('expected a non-empty list of provider names, e.g. ["CPUExecutionProvider"]')
    for name in value:
        if name not in KNOWN_EXECUTION_PROVIDERS:
            raise _Bad(f"unknown execution provider {name!r}"
                       f"{_did_you_mean(name, KNOWN_EXECUTION_PROVIDERS)}")
    if len(set(value)) != len(value):
        raise _Bad("expected each provider at most once")
    return tuple(value)


def command(value: Any) -> tuple[str, ...]:
    """An argv list; a string is split like a shell would, but no shell ever runs it."""
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise _Bad(f"expected a command line ({exc})") from None
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) for v in value) or not value[0]):
        raise _Bad('expected a non-empty list of strings, e.g. ["logger", "-t", "cvahash"]')
    return tuple(value)


def text_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _Bad('expected a list of non-empty strings, e.g. ["ntfy://station-alerts"]')
    return tuple(value)


def mqtt_url(value: Any) -> str:
    if value == "":
        return value
    if not isinstance(value, str) or not re.match(r"^mqtts?://[^/\s]+$", value):
        raise _Bad('expected "" (off) or a broker URL like "mqtt://192.168.4.1:1883" '
                   '(mqtts:// for TLS, user:password@ before the host if needed)')
    return value


def _did_you_mean(word: Any, options) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------------
# The schema: (key, check, default) per section. A check of "path" resolves a path.

PATH = "path"
OPTIONAL_PATH = "optional path"
PATH_LIST = "path list"

SCHEMA: dict[str, list[tuple[str, Any, Any]]] = {
    "device": [
        ("name", nonempty_text, _REQUIRED),
        ("description", text, ""),
    ],
    "runtime": [
        ("threads", integer(0, 256), 0),
        ("execution_providers", execution_providers, ("CPUExecutionProvider",)),
        ("precision", choice(*PRECISIONS), "int8"),
        ("bundle", PATH, _REQUIRED),
    ],
    "capture": [
        ("device", capture_device, "default"),
        ("sample_rate", integer(8000, 384000), 48000),
        ("channels", integer(1, 64), 1),
        ("blocksize", integer(0, 1 << 20), 0),
        ("latency", latency, "high"),
        ("buffer_s", number(1, 3600), 60.0),
    ],
    "windows": [
        ("window_s", number(0.5, 60), 10.0),
        ("hop_s", number(0, 60, above=True), 5.0),
    ],
    "store": [
        ("path", PATH, _REQUIRED),
        ("commit_every_windows", integer(1, 100_000), 60),
        ("commit_interval_s", number(0, 86400, above=True), 10.0),
    ],
    "retention": [
        ("enabled", boolean, False),
        ("path", OPTIONAL_PATH, None),
        ("quota_mb", integer(1, 100_000_000), 1024),
        ("format", choice(*RETENTION_FORMATS), "flac"),
    ],
    "status": [
        ("path", PATH, "/run/cvahash/status.json"),
        ("interval_s", number(1, 86400), 30.0),
    ],
    "logging": [
        ("level", choice(*LOG_LEVELS), "info"),
    ],
    "web": [
        ("listen", nonempty_text, "127.0.0.1"),
        ("port", integer(1, 65535), 8080),
        ("password_file", PATH, "web-password"),
        ("audio_roots", PATH_LIST, ()),
        ("threads", integer(0, 256), 1),
    ],
    "notify": [
        ("mqtt", mqtt_url, ""),
        ("mqtt_topic", nonempty_text, "cvahash/alerts"),
        ("apprise", text_list, ()),
        ("retry_s", number(1, 86400), 60.0),
    ],
}

WATCH_SCHEMA: list[tuple[str, Any, Any]] = [
    ("name", nonempty_text, _REQUIRED),
    ("query", nonempty_text, _REQUIRED),
    ("radius", integer(0, MAX_BITS), _REQUIRED),
    ("command", command, None),
    ("cooldown_s", number(0, 7 * 86400), 60.0),
]

SECTIONS = {
    "device": DeviceInfo, "runtime": RuntimeSettings, "capture": CaptureSettings,
    "windows": WindowSettings, "store": StoreSettings, "retention": RetentionSettings,
    "status": StatusSettings, "logging": LoggingSettings, "web": WebSettings,
    "notify": NotifySettings,
}
REQUIRED_SECTIONS = ("device", "runtime", "store")
# Keys renamed since configs were first written: (section, old) -> new. The old name is
# still read, so a station's config keeps working after an update.
RENAMED = {("store", "commit_every_s"): "commit_interval_s"}


# ---------------------------------------------------------------------------------------
# Reading


def _error(problems: list[str]) -> ConfigError:
    """One ConfigError for all of a file's problems, each also in ``.problems``."""
    exc = ConfigError("\n".join(problems))
    exc.problems = list(problems)
    return exc


class _Reader:
    """Walks one parsed file against the schema, collecting every problem it finds."""

    def __init__(self, label: str, source_text: str, base_dir: Path):
        self.label = label
        self.lines = source_text.splitlines()
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, where: str, message: str, line: int | None = None) -> None:
        at = f" (line {line})" if line else ""
        self.problems.append(f"{self.label}: {where} {message}{at}")

    def line_of(self, section: str, key: str | None, nth: int = 1) -> int | None:
        """1-based line of ``key`` in [section] (the nth [[section]] for arrays), or None."""
        current, count = None, 0
        header = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
        for number_, line in enumerate(self.lines, 1):
            m = header.match(line)
            if m:
                current = m.group(1).strip("\"' ")
                if current == section:
                    count += 1
                    if key is None and count == nth:
                        return number_
                continue
            if (key is not None and current == section and count == nth
                    and re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", line)):
                return number_
        return None

    def read_table(self, table: dict, schema, section: str, where: str, nth: int = 1) -> dict:
        out = {}
        known = [key for key, _, _ in schema]
        for key, check, default in schema:
            if key not in table:
                if default is _REQUIRED:
                    self.problem(where, f"{key}: missing (this key is required)",
                                 self.line_of(section, None, nth))
                if default is _REQUIRED:
                    out[key] = None
                else:  # defaults are valid by construction; only paths need resolving
                    out[key] = self.convert(check, default) if check == PATH else default
                continue
            value = table[key]
            try:
                out[key] = self.convert(check, value)
            except _Bad as exc:
                self.problem(where, f"{key}: {exc}, got {_show(value)}",
                             self.line_of(section, key, nth))
                out[key] = None
        for key in table:
            if key not in known:
                self.problem(where, f"unknown key {key!r}{_did_you_mean(key, known)}",
                             self.line_of(section, key, nth))
        return out

    def convert(self, check, value):
        if check == PATH_LIST:
            if not isinstance(value, (list, tuple)):
                raise _Bad("expected a list of paths")
            return tuple(self.convert(PATH, v) for v in value)
        if check in (PATH, OPTIONAL_PATH):
            if value is None and check == OPTIONAL_PATH:
                return None
            if not isinstance(value, str) or not value.strip():
                raise _Bad("expected a path (a non-empty string)")
            path = Path(os.path.expanduser(value))
            return path if path.is_absolute() else self.base_dir / path
        return check(value)


def loads_config(source_text: str, *, name: str = "<config>",
                 base_dir: str | Path | None = None) -> DeviceConfig:
    """Parse and validate config text; ``name`` labels messages, ``base_dir`` anchors
    relative paths (default: the current folder)."""
    if tomllib is None:
        raise ConfigError("reading device configs needs Python 3.11 or the tomli package: "
                          "pip install tomli")
    try:
        data = tomllib.loads(source_text)
    except tomllib.TOMLDecodeError as exc:
        raise _error([f"{name}: not valid TOML: {exc}"]) from None
    except RecursionError:
        data = None
    if data is None or toml_depth(data) > MAX_CONFIG_DEPTH:
        raise _error([f"{name}: tables and arrays nest more than {MAX_CONFIG_DEPTH} deep; a "
                      "station config needs at most 3 (see docs/configuration.md)"])
    reader = _Reader(name, source_text, Path(base_dir) if base_dir is not None else Path.cwd())
    sections = {}
    for section, schema in SCHEMA.items():
        table = data.get(section, {})
        if section not in data and section in REQUIRED_SECTIONS:
            reader.problem(f"[{section}]", "missing (this section is required)")
        if not isinstance(table, dict):
            reader.problem(f"[{section}]", f"expected a table [{section}], got {_show(table)}",
                           reader.line_of("", section))
            table = {}
        table = _renamed(reader, section, table)
        sections[section] = reader.read_table(table, schema, section, f"[{section}]")

    watchlist = _read_watchlist(reader, data.get("watchlist", []))
    _check_unknown_top_level(reader, data)
    _check_together(reader, sections)
    if reader.problems:
        raise _error(reader.problems)
    built = {name_: cls(**sections[name_]) for name_, cls in SECTIONS.items()}
    return DeviceConfig(watchlist=tuple(watchlist), **built)


def _renamed(reader: _Reader, section: str, table: dict) -> dict:
    """``table`` with old key names (RENAMED) read as their new names."""
    out = dict(table)
    for (where, old), new in RENAMED.items():
        if where != section or old not in out:
            continue
        if new in out:
            reader.problem(f"[{section}]", f"{old}: the old name of {new}; give only {new}",
                           reader.line_of(section, old))
            del out[old]
        else:
            out[new] = out.pop(old)
    return out


def load_config(path: str | Path, *, base_dir: str | Path | None = None) -> DeviceConfig:
    """Read and validate the config file at ``path``. Relative paths inside it resolve
    against ``base_dir``, or the file's own folder when ``base_dir`` is None."""
    path = Path(path)
    try:
        raw = read_capped(path, MAX_CONFIG_BYTES, what="config file")
    except UnsafeFile as exc:
        raise _error([f"{exc}; give the path of the station's TOML config file"]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise _error([f"{path}: cannot read the config file: {reason}"]) from None
    try:
        source_text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error([f"{path}: not a UTF-8 text file (byte {exc.start}); save it as UTF-8"]
                     ) from None
    base = Path(base_dir) if base_dir is not None else path.resolve().parent
    config = loads_config(source_text, name=str(path), base_dir=base)
    return DeviceConfig(**{f.name: getattr(config, f.name) for f in fields(config)
                           if f.name != "source"}, source=path)


def _read_watchlist(reader: _Reader, entries: Any) -> list[WatchEntry]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        reader.problem("[[watchlist]]", "expected [[watchlist]] tables, "
                       f"got {_show(entries)}", reader.line_of("", "watchlist"))
        return []
    out, seen = [], {}
    for i, entry in enumerate(entries, 1):
        label = f"[watchlist #{i}" + (f" {entry['name']!r}]" if isinstance(
            entry.get("name"), str) else "]")
        values = reader.read_table(entry, WATCH_SCHEMA, "watchlist", label, nth=i)
        name = values["name"]
        if name is not None and name in seen:
            reader.problem(label, f"name: {name!r} is already used by watchlist entry "
                           f"#{seen[name]}; names must be unique", reader.line_of(
                               "watchlist", "name", i))
        elif name is not None:
            seen[name] = i
        out.append(WatchEntry(**values))
    return out


def _check_unknown_top_level(reader: _Reader, data: dict) -> None:
    known = [*SCHEMA, "watchlist"]
    for key, value in data.items():
        if key in known:
            continue
        home = [s for s, schema in SCHEMA.items() if any(k == key for k, _, _ in schema)]
        if not isinstance(value, dict) and home:
            hint = f" (it belongs in a section: [{home[0]}] {key})"
        else:
            hint = _did_you_mean(key, known)
        kind = "section" if isinstance(value, dict) else "key"
        reader.problem("(top level)", f"unknown {kind} {key!r}{hint}",
                       reader.line_of(key, None) if kind == "section"
                       else reader.line_of("", key) or _first_line(reader, key))


def _first_line(reader: _Reader, key: str) -> int | None:
    for number_, line in enumerate(reader.lines, 1):
        if re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return number_
    return None


def _check_together(reader: _Reader, s: dict) -> None:
    """Checks that need two keys; skipped where either key already failed."""
    w = s["windows"]
    if w["window_s"] is not None and w["hop_s"] is not None and w["hop_s"] > w["window_s"]:
        reader.problem("[windows]", f"hop_s: expected at most window_s ({w['window_s']:g}), "
                       f"got {w['hop_s']:g}; a hop longer than the window leaves audio "
                       "that no code covers", reader.line_of("windows", "hop_s"))
    r = s["retention"]
    if r["enabled"] and r["path"] is None and "path" not in _missing_bad(reader, "retention"):
        reader.problem("[retention]", "path: missing (required when enabled = true)",
                       reader.line_of("retention", "enabled"))
    if r["path"] is not None and s["store"]["path"] is not None:
        audio, store = Path(os.path.normpath(r["path"])), Path(os.path.normpath(
            s["store"]["path"]))
        if audio == store or store in audio.parents:
            reader.problem("[retention]", f"path: {str(r['path'])!r} is inside the code store "
                           f"{str(s['store']['path'])!r}; keep audio in its own folder",
                           reader.line_of("retention", "path"))


def _missing_bad(reader: _Reader, section: str) -> set[str]:
    """Keys of ``section`` already reported, so one mistake gives one message."""
    prefix = f"{reader.label}: [{section}] "
    return {p[len(prefix):].split(":")[0] for p in reader.problems if p.startswith(prefix)}
