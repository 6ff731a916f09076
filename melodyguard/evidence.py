"""Evidence for people: plain-language match lines, piano rolls and a self-contained HTML report.

The HTML has every picture embedded as a base64 PNG and loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from .fingerprint.melody import Melody

__all__ = ["match_sentence", "score_sentence", "piano_roll_png", "render_html", "write_html_report"]


def match_sentence(match: dict[str, Any], *, seconds: bool = False, beats: bool = True) -> str:
    """E.g. "bars 9-12 of the query match bars 1-4 of 'The Kesh' (owner: X), transposed +3, 18 of 20 notes"."""
    w = match["work"]
    seg = match["segments"][0]
    q, r = seg["query"], seg["reference"]
    if seconds is True:  # audio: seconds first, bars too where a beat grid was found
        where = f"{q['seconds'][0]:.1f}-{q['seconds'][1]:.1f} s" + (f" (bars {q['bars'][0]}-{q['bars'][1]})" if beats else "")
    else:
        where = f"bars {q['bars'][0]}-{q['bars'][1]}"
    track = match.get("track")  # check --tracks all: which line of the query
    query = f"the query's track {track['index']} ({track['name'] or 'unnamed'})" if track else "the query"
    return (
        f"{where} of {query} match bars {r['bars'][0]}-{r['bars'][1]} of '{w['title']}' "
        f"(owner: {w['owner'] or 'unknown'}), transposed {match['transposition_semitones']:+d} semitones, "
        f"tempo x{match['tempo_ratio']:.2f}, {seg['matched_notes']} of {seg['aligned_notes']} notes"
    )


def score_sentence(match: dict[str, Any], n_works: int) -> str:
    e = match["score"]["evalue"]
    return (
        f"E-value {e:.3g}: a match at least this strong is expected {e:.3g} times by chance when a "
        f"melody this long is compared with this catalogue of {n_works} works "
        f"(chance probability {match['score']['p_chance']:.3g})"
        + (f", counting each of the {match['score']['lines_checked']} lines of the query checked." if
           match["score"].get("lines_checked", 1) > 1 else ".")
    )


def piano_roll_png(query: Melody, ref: Melody, match: dict[str, Any], *, context_notes: int = 6) -> bytes:
    """Two aligned piano rolls (query above, reference below) of a match's first segment.

    The query is shown transposed back by the match's transposition, so equal pitches line up.
    Matched notes (equal pitch) are highlighted; bar lines carry bar numbers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = match["segments"][0]
    pairs = np.asarray(seg.get("pairs") or [], dtype=np.int64).reshape(-1, 2)
    shift = -int(match["transposition_semitones"])
    qa, qb = seg["query"]["start_note"], seg["query"]["end_note"]
    ra, rb = seg["reference"]["start_note"], seg["reference"]["end_note"]
    matched_q = {int(i) for i, j in pairs if query.pitches[i] + shift == ref.pitches[j]}
    matched_r = {int(j) for i, j in pairs if query.pitches[i] + shift == ref.pitches[j]}
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.6), dpi=90)
    for ax, mel, a, b, matched, label, sh in (
        (axes[0], query, qa, qb, matched_q, "query (transposition undone)", shift),
        (axes[1], ref, ra, rb, matched_r, f"reference: {match['work']['title']}", 0),
    ):
        lo, hi = max(0, a - context_notes), min(len(mel), b + context_notes + 1)
        on = mel.onsets_beats[lo:hi]
        du = mel.durations_beats[lo:hi]
        pi = mel.pitches[lo:hi] + sh
        for k in range(hi - lo):
            idx = lo + k
            inside = a <= idx <= b
            color = "#d62728" if idx in matched else ("#1f77b4" if inside else "#bbbbbb")
            ax.add_patch(plt.Rectangle((on[k], pi[k] - 0.4), max(du[k] * 0.95, 0.05), 0.8, color=color))
        x0, x1 = float(on[0]), float(on[-1] + du[-1])
        bars = mel.bars[lo:hi]
        for k in range(hi - lo):
            if k == 0 or bars[k] != bars[k - 1]:
                bar_start = on[k] - mel.beats_in_bar[lo + k]
                if bar_start >= x0 - 1e-6:
                    ax.axvline(bar_start, color="#888888", lw=0.6)
                ax.text(max(bar_start, x0), pi.max() + 1.6, f"bar {bars[k]}", fontsize=7, color="#555555")
        track = mel.info.get("pitch_track") if mel is query else None
        if track and len(mel) > 1:  # audio query: the extracted pitch track under its notes
            t = np.asarray(track["times"], np.float64)
            f = np.asarray([np.nan if v is None else v for v in track["midi"]], np.float64) + sh
            tb = np.interp(t, mel.onsets_seconds, mel.onsets_beats)
            sel = (tb >= x0) & (tb <= x1)
            ax.plot(tb[sel], f[sel], color="#222222", lw=0.8, label="pitch track")
            ax.legend(loc="lower right", fontsize=7)
        ax.set_xlim(x0, x1)
        ax.set_ylim(pi.min() - 2, pi.max() + 3)
        ax.set_ylabel("MIDI pitch")
        ax.set_title(label, fontsize=9, loc="left")
    axes[1].set_xlabel("beats (red: matched notes, blue: aligned passage, grey: context)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
.verdict{display:inline-block;padding:.2em .6em;border-radius:4px;color:#fff;font-weight:bold}
.block{background:#c0392b}.review{background:#e67e22}.clear{background:#27ae60}.error{background:#555}
.match{border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0}
.stock{color:#8a6d3b;background:#fcf8e3;padding:.3em .5em;border-radius:4px}
img{max-width:100%} table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:.2em .5em;font-size:90%}
"""


def render_html(report: dict[str, Any], pictures: list[bytes | None], *, n_works: int) -> str:
    """A self-contained HTML page for one report; ``pictures[i]`` belongs to ``report['matches'][i]``."""
    q = report["query"]
    e = html.escape
    audio = q.get("source") == "audio"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>melodyguard report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>melodyguard report <span class='verdict {e(report['verdict'])}'>{e(report['verdict'].upper())}</span></h1>",
        f"<p>Query <code>{e(str(q.get('path', '')))}</code>: {q.get('n_notes')} notes, "
        f"{q.get('duration_seconds', 0):.1f} s. sha256 <code>{e(str(q.get('sha256', ''))[:16])}</code>…</p>",
        f"<p>Checked against {n_works} works. Thresholds: review at E ≤ {report['thresholds']['review_evalue']:g}, "
        f"block at E ≤ {report['thresholds']['block_evalue']:g}. Report schema {e(report['schema'])}.</p>",
    ]
    if not report["matches"]:
        parts.append("<p>No candidate matches.</p>")
    for m, pic in zip(report["matches"], pictures):
        parts.append(f"<div class='match'><h2><span class='verdict {e(m['verdict'])}'>{e(m['verdict'])}</span> "
                     f"{e(m['work']['title'])} <small>(work #{m['work']['id']})</small></h2>")
        parts.append(f"<p><b>{e(match_sentence(m, seconds=audio, beats=bool(q.get('has_beats', True))))}.</b></p>")
        parts.append(f"<p>{e(score_sentence(m, n_works))}</p>")
        if m.get("matched_as") == "repeats_joined":
            parts.append("<p class='stock'>Matched with runs of repeated notes joined on both sides: the recording's "
                         "transcription hears a legato repeated note as one; note counts are of the joined notes.</p>")
        if m["stock"]["is_stock"]:
            parts.append(f"<p class='stock'>Stock material: {m['stock']['similar_works']} other works share this passage "
                         "about as closely; it counts for less.</p>")
        rows = "".join(
            f"<tr><td>{i + 1}</td><td>bars {s['query']['bars'][0]}-{s['query']['bars'][1]} "
            f"({s['query']['seconds'][0]:.1f}-{s['query']['seconds'][1]:.1f} s)</td>"
            f"<td>bars {s['reference']['bars'][0]}-{s['reference']['bars'][1]}</td>"
            f"<td>{s['matched_notes']} / {s['aligned_notes']}</td></tr>"
            for i, s in enumerate(m["segments"])
        )
        parts.append("<table><tr><th>#</th><th>query</th><th>reference</th><th>matched / aligned notes</th></tr>"
                     f"{rows}</table>")
        parts.append(f"<p>Coverage: {m['coverage']['query']:.0%} of the query, {m['coverage']['reference']:.0%} of the reference.</p>")
        if pic:
            parts.append(f"<img alt='piano roll of the match' src='data:image/png;base64,{base64.b64encode(pic).decode()}'>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html_report(report: dict[str, Any], catalogue: Any, out: Path, *, query_source: Any = None,
                      query_melody: Melody | None = None) -> Path:
    """Write the HTML evidence report of ``report`` to ``out`` (pictures need the query melody)."""
    from .fingerprint import extract_melody

    if query_melody is None and query_source is not None:
        query_melody = extract_melody(query_source)
    lines: dict[int, Melody] = {}  # matches found in other lines (check --tracks all)
    pictures: list[bytes | None] = []
    for m in report["matches"]:
        q = query_melody
        track = (m.get("track") or {}).get("index")
        if track is not None and query_source is not None and track != (q.info.get("track") if q else None):
            if track not in lines:
                lines[track] = extract_melody(query_source, track=track, min_notes=1)
            q = lines[track]
        if q is None:
            pictures.append(None)
            continue
        pictures.append(piano_roll_png(q, catalogue.melody(m["work"]["id"]), m))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report, pictures, n_works=catalogue.count()), encoding="utf-8")
    return out
