"""Showing archive answers to people: activity as a table, CSV and a PNG chart; `info`.

The chart draws one line per station (counts per day or hour) when there are few
stations, and a station x time heat map when there are more than `MAX_LINES`, so a
programme of a hundred sites still reads at a glance.
"""

from __future__ import annotations

import csv
import io
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ..errors import CvahashError, MissingExtra
from ..query.report import human_bytes

MAX_LINES = 8


def _bucket(t: datetime, by: str) -> str:
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d") if by == "day" else t.strftime("%Y-%m-%dT%H:00Z")


def format_table(counts, by: str) -> str:
    rows = [("station", by, "windows")] + [(s, _bucket(t, by), str(n)) for s, t, n in counts]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}".rstrip()
                     for a, b, c in rows)


def write_csv(counts, path: str, by: str) -> None:
    """``station,<day|hour>,windows`` rows; ``-`` writes to stdout."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["station", by, "windows"])
    for station, t, n in counts:
        writer.writerow([station, _bucket(t, by), n])
    if path == "-":
        sys.stdout.write(out.getvalue())
        return
    try:
        Path(path).write_text(out.getvalue(), encoding="utf-8")
    except OSError as exc:
        raise CvahashError(f"--csv {path}: cannot write: {exc.strerror}") from None


def write_png(counts, path: str, by: str, title: str) -> Path:
    """A chart of ``counts`` [(station, bucket, n)] in ``path`` (matplotlib, Agg)."""
    try:
        import matplotlib  # optional: the [plots] extra

        matplotlib.use("Agg")
        import matplotlib.dates as mdates  # optional: [plots]
        import matplotlib.pyplot as plt  # optional: [plots]
    except ImportError:
        raise MissingExtra("--png needs matplotlib: pip install '.[plots]' in the cvahash "
                           "checkout") from None
    stations = sorted({s for s, _, _ in counts})
    times = sorted({t for _, t, _ in counts})
    fig_h = 3.6 if len(stations) <= MAX_LINES else min(2.0 + 0.22 * len(stations), 30)
    fig, ax = plt.subplots(figsize=(10, fig_h), dpi=110)
    unit = "day" if by == "day" else "hour"
    if not counts:
        ax.text(0.5, 0.5, "no windows match", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    elif len(stations) <= MAX_LINES:
        for station in stations:
            pts = sorted((t, n) for s, t, n in counts if s == station)
            # every bucket of the span, zero where the station had no match
            series = dict(pts)
            xs = _span(times, by)
            ys = [series.get(x, 0) for x in xs]
            ax.plot(xs, ys, marker="o", markersize=3, drawstyle="steps-mid", label=station,
                    markevery=[i for i, y in enumerate(ys) if y])  # dots where it was heard
        ax.set_ylabel(f"windows per {unit}")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8, frameon=False,
                  ncol=min(len(stations), 4))
        ax.grid(alpha=0.3)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        xs = _span(times, by)
        col = {t: i for i, t in enumerate(xs)}
        grid = np.zeros((len(stations), len(xs)))
        row = {s: i for i, s in enumerate(stations)}
        for s, t, n in counts:
            grid[row[s], col[t]] = n
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                          extent=(mdates.date2num(xs[0]), mdates.date2num(xs[-1]) + _step(by),
                                  len(stations), 0))
        ax.set_yticks(np.arange(len(stations)) + 0.5, stations, fontsize=7)
        ax.xaxis_date()
        fig.colorbar(image, ax=ax, label=f"windows per {unit}", pad=0.01)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("UTC")
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path)
    except OSError as exc:
        raise CvahashError(f"--png {path}: cannot write: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return path


def _step(by: str) -> float:
    return 1.0 if by == "day" else 1.0 / 24


def _span(times: list[datetime], by: str) -> list[datetime]:
    step = timedelta(days=1) if by == "day" else timedelta(hours=1)
    out, t = [], times[0]
    while t <= times[-1] and len(out) < 100_000:
        out.append(t)
        t += step
    return out


def format_info(info: dict) -> str:
    """``cvahash archive info`` as "key: value" lines and an ingest history table."""
    stations = ", ".join(f"{s or '(none)'} ({n})" for s, n in info["stations"].items()) or "-"
    span = (f"{info['first_capture']} .. {info['last_capture']}" if info["first_capture"]
            else "- (empty)")
    bundles = "; ".join(f"{b['fingerprint']} ({b['bits']} bits, {b['windows']} windows)"
                        for b in info["bundles"]) or "-"
    rows = [("archive", f"{info['archive']} ({info['engine']})"),
            ("windows", str(info["windows"])),
            ("stations", f"{len(info['stations'])}: {stations}"),
            ("time span (UTC)", span), ("bundles", bundles), ("size", human_bytes(info["bytes"])),
            ("ingests", str(len(info["ingests"])))]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k + ':':<{width + 1}} {v}" for k, v in rows]
    for ing in info["ingests"]:
        lines.append(f"  {ing['ingested']}  {ing['file']}  {ing['rows_added']}/"
                     f"{ing['rows_in_file']} windows new  {','.join(ing['stations'])}  "
                     f"key {ing['key_id']}  update {ing['update_id']}")
    return "\n".join(lines)
