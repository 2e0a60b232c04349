"""The activity chart as inline SVG (no script, no external asset): stacked bars per
station, a labelled count axis and time axis, the threshold in the caption."""

from __future__ import annotations

from html import escape

import numpy as np

from ...model.frontend import _hz_to_mel_slaney, _mel_to_hz_slaney

# Colour-blind-safe (Okabe-Ito) colours, one per station in order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")


def _nice_max(n: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... that is at least ``n`` (the axis top)."""
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale >= n:
                return m * scale
        scale *= 10


def activity_svg(activity, width: int = 720, height: int = 260) -> str:
    """``<svg>`` markup for an `cvahash.query.activity.Activity`."""
    series = activity.series()
    left, right, top, bottom = 44, 10, 10, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([e["total"] for e in series] or [0])
    ymax = _nice_max(peak)
    n = max(len(series), 1)
    slot = plot_w / n
    bar = max(slot * 0.8, 1.0)
    colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(activity.stations)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'role="img" class="chart" aria-label="hits per {activity.by}">']
    # y axis: 0, half, max
    step = next(ymax // d for d in (5, 4, 2, 1) if ymax % d == 0)
    for v in range(0, ymax + 1, step):
        y = top + plot_h - (v / ymax) * plot_h if ymax else top + plot_h
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#ccc" stroke-width="1"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#333">{v}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2:.0f}" font-size="11" fill="#333" '
                 f'transform="rotate(-90 12 {top + plot_h / 2:.0f})" text-anchor="middle">'
                 f'hits per {activity.by}</text>')
    label_every = max(1, round(n / 8))
    for i, entry in enumerate(series):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h
        for s in activity.stations:
            c = entry["stations"][s]
            if not c:
                continue
            h = c / ymax * plot_h
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{colours[s]}"><title>{escape(entry["start"])} '
                         f'{escape(s)}: {c}</title></rect>')
        if i % label_every == 0:
            start = entry["start"]
            text = start[5:10] if activity.by == "day" else f"{start[5:10]} {start[11:13]}h"
            parts.append(f'<text x="{left + i * slot + slot / 2:.1f}" y="{top + plot_h + 16}" '
                         f'font-size="10" text-anchor="middle" fill="#333">{text}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" font-size="11" '
                 'text-anchor="middle" fill="#333">capture time (UTC)</text>')
    parts.append("</svg>")
    return "".join(parts)


def legend(activity) -> list[tuple[str, str]]:
    """(station, colour) pairs in the chart's order."""
    return [(s, PALETTE[i % len(PALETTE)]) for i, s in enumerate(activity.stations)]


def spectrogram_ticks(params, n_freq: int = 5, n_time: int = 6) -> dict[str, list[str]]:
    """Axis labels for the hit pictures, evenly spaced so the page can lay them out
    without inline styles: frequencies top to bottom at equal steps of the mel scale the
    picture uses (Slaney's, as the front end), times left to right over the window."""
    mels = np.linspace(_hz_to_mel_slaney(params.f_min), _hz_to_mel_slaney(params.f_max), n_freq)
    hz = [float(_mel_to_hz_slaney(m)) for m in mels[::-1]]
    freq = [f"{h / 1000:.1f} kHz" if h >= 1000 else f"{h:.0f} Hz" for h in hz]
    step = params.max_length_s / (n_time - 1)
    times = [f"{i * step:g} s" for i in range(n_time)]
    return {"freq": freq, "time": times}
