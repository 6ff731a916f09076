"""Evidence HTML, batch audits (resumable), self-audits and guarded generation."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from conftest import (
    interrupt_when,
    interruptible,
    make_catalogue_melodies,
    melody_midi,
    random_melody,
    two_line_midi,
)

from melodyguard import Catalogue, Melody, check_file, check_melody, cli
from melodyguard.audit import collect_files, run_audit, self_audit
from melodyguard.evidence import match_sentence, write_html_report
from melodyguard.model.generate import melody_to_midi, sample_melodies


@pytest.fixture
def small_catalogue(tmp_path, shipped_encoder, rng):
    cat = Catalogue(tmp_path / "cat", encoder=shipped_encoder)
    mels = make_catalogue_melodies(rng, 12, 40)
    cat.add_melodies([{"melody": m, "sha256": f"s{i}", "title": f"tune {i}", "owner": "acme"} for i, m in enumerate(mels)])
    return cat, mels


def _strip(rep):
    return (rep["verdict"], [(m["work"]["id"], m["score"]["evalue"], m["verdict"]) for m in rep.get("matches", [])])


def test_html_report_has_a_picture_per_match_and_no_network(small_catalogue, tmp_path):
    cat, mels = small_catalogue
    src = mels[3]
    q = tmp_path / "q.mid"
    q.write_bytes(melody_midi(src.pitches + 4, src.onsets_beats, src.durations_beats))
    rep = check_file(q, cat)
    assert rep["matches"] and rep["verdict"] == "block"
    out = write_html_report(rep, cat, tmp_path / "r.html", query_source=q)
    page = out.read_text()
    assert page.count("<svg ") == len(rep["matches"])
    assert not re.search(r"(src|href)=['\"]?https?://", page)
    assert "transposed +4 semitones" in match_sentence(rep["matches"][0])
    one = json.loads(json.dumps(rep["matches"][0]))
    one["transposition_semitones"] = -1
    one["segments"][0]["query"]["bars"] = [3, 3]
    assert match_sentence(one).startswith("bar 3 of the query matches bar") and "transposed -1 semitone," in match_sentence(one)
    assert "tune 3" in page and "E-value" in page


def test_piano_roll_svg_marks_the_matched_notes_and_escapes_titles(small_catalogue):
    """Both panels draw the matched notes red (the query transposed back), every note says
    where it is, a title cannot inject markup, and the PNG variant draws a PNG."""
    import xml.etree.ElementTree as ET

    from melodyguard.evidence import piano_roll_png, piano_roll_svg

    cat, mels = small_catalogue
    src = mels[5]
    p, o, d = src.pitches, src.onsets_beats, src.durations_beats
    q = Melody.from_notes(np.r_[p[:20] - 3, 70], np.r_[o[:20], o[19] + 2], np.r_[d[:20], 1.0])
    rep = check_melody(q, cat)
    m = rep["matches"][0]
    assert m["work"]["id"] == cat.works()[5].id and m["transposition_semitones"] == -3
    m["work"]["title"] = "</text><script>alert(1)</script>"
    svg = piano_roll_svg(q, cat.melody(m["work"]["id"]), m)
    root = ET.fromstring(svg)  # well-formed
    ns = "{http://www.w3.org/2000/svg}"
    assert not list(root.iter(ns + "script"))
    red = [r for r in root.iter(ns + "rect") if r.get("fill") == "#d62728"]
    seg = m["segments"][0]
    assert len(red) == 2 * seg["matched_notes"]
    titles = [r.find(ns + "title").text for r in red]
    assert titles[0].startswith("note ") and ", bar " in titles[0]
    assert any("(shown as " in t for t in titles[: len(titles) // 2])  # the query's notes, moved by +3
    assert "&lt;script&gt;" in svg
    assert piano_roll_png(q, cat.melody(m["work"]["id"]), m)[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_text_lists_flagged_matches_and_sums_up_the_rest(small_catalogue, tmp_path, capsys):
    from melodyguard._cli_catalogue import describe

    cat, mels = small_catalogue
    q = tmp_path / "q.mid"
    q.write_bytes(melody_midi(mels[2].pitches + 2, mels[2].onsets_beats, mels[2].durations_beats))
    rep = check_file(q, cat)
    weak = [m for m in rep["matches"] if m["verdict"] == "clear"]
    assert rep["verdict"] == "block" and weak  # the small catalogue's other works are weak candidates
    text = describe(rep).splitlines()
    assert text[1].startswith("  [block] ") and not any("[clear]" in x for x in text)
    assert text[-1].startswith(f"  {len(weak)} weaker candidate") and "--all-matches" in text[-1]
    full = describe(rep, all_matches=True).splitlines()
    assert len(full) == 1 + len(rep["matches"]) and sum("[clear]" in x for x in full) == len(weak)
    # nothing flagged: the threshold is named
    quiet = dict(rep, verdict="clear", matches=weak)
    assert describe(quiet).splitlines()[1].startswith("  nothing reaches the review threshold (E <= 0.0001); ")
    assert cli.main(["check", str(q), "--all-matches", "--catalogue", str(cat.path)]) == cli.EXIT_BLOCK
    assert capsys.readouterr().out.count("[clear]") == len(weak)


def test_reports_say_what_an_unedited_copy_of_the_query_would_score(small_catalogue, tmp_path):
    """``query.exact_copy_evalue`` is what an unedited copy of the whole query scores here: an
    unedited whole copy's match scores that (or a little worse, for stock material), shorter
    queries can do less, and a ``clear`` report of a query that even a copy could not flag says
    'cannot tell' in the text and the HTML page; a flagged one, or one that could be flagged, does not."""
    from melodyguard._cli_catalogue import describe
    from melodyguard.evidence import short_query_note
    from melodyguard.schema import validate_report

    cat, mels = small_catalogue
    src = mels[5]
    whole = check_melody(Melody.from_notes(src.pitches + 3, src.onsets_beats, src.durations_beats), cat)
    exact, top = whole["query"]["exact_copy_evalue"], whole["matches"][0]
    assert whole["verdict"] == "block" and top["work"]["title"] == "tune 5"
    assert exact <= top["score"]["evalue"] <= 2 * exact  # the estimate is what a copy gets
    validate_report(whole)
    short = {n: check_melody(Melody.from_notes(src.pitches[:n], src.onsets_beats[:n] - src.onsets_beats[0],
                                               src.durations_beats[:n]), cat)["query"]["exact_copy_evalue"]
             for n in (8, 12, 20)}
    assert exact < short[20] < short[12] < short[8]
    assert short_query_note(whole) is None  # flagged
    review = whole["thresholds"]["review_evalue"]
    could = dict(whole, verdict="clear", matches=[], query={**whole["query"], "exact_copy_evalue": review / 10})
    assert short_query_note(could) is None and "note:" not in describe(could)  # could have been flagged
    cannot = dict(could, query={**could["query"], "exact_copy_evalue": 0.3})
    assert "too short to judge here" in describe(cannot).splitlines()[-1] and "E 0.3 " in describe(cannot)
    page = tmp_path / "r.html"
    write_html_report(cannot, cat, page)
    assert "too short to judge here" in page.read_text()
    # several lines: the best line's, corrected as its matches are
    notes = [(m.pitches, m.onsets_beats, m.durations_beats) for m in (mels[1], mels[2])]
    rep = check_file(two_line_midi(*notes), cat, filename="two.mid")
    lines = rep["query"]["tracks_checked"]
    assert len(lines) == 2 and rep["query"]["exact_copy_evalue"] > 0
    validate_report(rep)


def test_check_html_cli(small_catalogue, tmp_path, monkeypatch, capsys):
    cat, mels = small_catalogue
    q = tmp_path / "q.mid"
    q.write_bytes(melody_midi(mels[1].pitches, mels[1].onsets_beats, mels[1].durations_beats))
    code = cli.main(["check", str(q), "--html", str(tmp_path / "out.html"), "--catalogue", str(cat.path)])
    assert code == cli.EXIT_BLOCK
    assert "<svg " in (tmp_path / "out.html").read_text()


def _audit_files(tmp_path, mels, rng, n=10):
    files = []
    for i in range(n):
        f = tmp_path / "in" / f"f{i:02d}.mid"
        f.parent.mkdir(exist_ok=True)
        if i % 3 == 0:
            m = mels[i % len(mels)]
            f.write_bytes(melody_midi(m.pitches + 1, m.onsets_beats, m.durations_beats))
        elif i == 4:
            f.write_bytes(b"corrupt")
        else:
            f.write_bytes(melody_midi(*random_melody(rng, 36)))
        files.append(f)
    return files


def test_audit_resumes_to_the_same_results(small_catalogue, tmp_path, rng):
    cat, mels = small_catalogue
    files = _audit_files(tmp_path, mels, rng)
    full = run_audit(files, cat.path, tmp_path / "full", progress=False)
    assert full["done"] == 10 and full["verdicts"]["error"] == 1 and full["verdicts"]["block"] == 4
    part = run_audit(files, cat.path, tmp_path / "part", progress=False, limit=5)
    assert part["done"] == 5
    with open(tmp_path / "part" / "results.jsonl", "a") as fh:
        fh.write('{"query": {"path": "half-writ')  # an interruption mid-line
    resumed = run_audit(files, cat.path, tmp_path / "part", progress=False)
    assert resumed["checked_now"] == 5 and resumed["done"] == 10
    a = {json.loads(x)["query"]["path"]: _strip(json.loads(x)) for x in (tmp_path / "full" / "results.jsonl").read_text().splitlines()}
    b = {json.loads(x)["query"]["path"]: _strip(json.loads(x)) for x in (tmp_path / "part" / "results.jsonl").read_text().splitlines()}
    assert a == b
    summary = (tmp_path / "part" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("file,verdict,top_work_id") and len(summary) == 11
    html = (tmp_path / "part" / "report.html").read_text()
    assert html.index("f00.mid") < html.index("f01.mid")  # ranked by risk: blocks first
    n = {v: sum(json.loads(x)["verdict"] == v for x in (tmp_path / "part" / "results.jsonl").read_text().splitlines())
         for v in ("block", "clear")}
    assert f"10 files, ranked by risk: <span class='verdict block'>{n['block']} block</span>" in html
    assert f"{n['clear']} clear</span>, <span class='verdict error'>1 error</span>" in html
    assert len(list((tmp_path / "part" / "evidence").glob("*.html"))) == 4


def test_audit_marks_clear_files_too_short_to_judge(tmp_path, shipped_encoder):
    """An audit's summary.csv says which clear files were too short to be flagged at all
    (``too_short_to_judge``), and its return value counts them; a copy long enough is not marked.
    (In a catalogue of 300 works an unedited 8-note copy cannot reach the review threshold.)"""
    import csv

    mels = make_catalogue_melodies(np.random.default_rng(17), 300, 60)
    cat = Catalogue(tmp_path / "cat", encoder=shipped_encoder)
    cat.add_melodies([{"melody": m, "sha256": f"w{i}", "title": f"tune {i}"} for i, m in enumerate(mels)])
    src = mels[4]
    (tmp_path / "long.mid").write_bytes(melody_midi(src.pitches + 2, src.onsets_beats, src.durations_beats))
    (tmp_path / "hook.mid").write_bytes(melody_midi(src.pitches[:8], src.onsets_beats[:8] - src.onsets_beats[0],
                                                    src.durations_beats[:8]))
    res = run_audit([tmp_path / "long.mid", tmp_path / "hook.mid"], cat.path, tmp_path / "out", progress=False)
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        rows = {os.path.basename(r["file"]): r for r in csv.DictReader(fh)}
    reps = {os.path.basename(json.loads(x)["query"]["path"]): json.loads(x)
            for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    assert rows["long.mid"]["verdict"] == "block" and rows["long.mid"]["too_short_to_judge"] == ""
    hook = reps["hook.mid"]
    assert hook["verdict"] == "clear" and hook["query"]["exact_copy_evalue"] > hook["thresholds"]["review_evalue"]
    assert rows["hook.mid"]["too_short_to_judge"] == "yes" and res["too_short_to_judge"] == 1


def test_audit_collects_folders_and_manifest(tmp_path, rng):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.mid").write_bytes(b"x")
    (tmp_path / "d" / "sub" / "b.MID").write_bytes(b"x")
    (tmp_path / "d" / "notes.txt").write_text("x")
    (tmp_path / "m.csv").write_text("path\nd/a.mid\n")
    files = collect_files([tmp_path / "d"], manifest=tmp_path / "m.csv")
    assert sorted(f.name for f in files) == ["a.mid", "b.MID"]


def test_self_audit_finds_planted_duplicate(small_catalogue):
    cat, mels = small_catalogue
    dup = mels[6]
    cat.add_melody(Melody.from_notes(dup.pitches - 2, dup.onsets_beats, dup.durations_beats), sha256="dup",
                   title="Same Tune Other Title")
    clusters = self_audit(cat, progress=False)
    titles = [sorted(w["title"] for w in c["works"]) for c in clusters]
    assert ["Same Tune Other Title", "tune 6"] in titles
    assert all(len(t) == 2 for t in titles)


def test_guarded_generation_never_keeps_a_flagged_candidate(tmp_path, shipped_encoder):
    raw = sample_melodies(shipped_encoder, 4, bars=8, seed=3)
    cat = Catalogue(tmp_path / "cat", encoder=shipped_encoder)
    # Plant what the unguarded generator produces for seed 3.
    cat.add_melodies([{"melody": m, "sha256": f"g{i}", "title": f"planted {i}"} for i, m in enumerate(raw[:3])])
    out = tmp_path / "g"
    code = cli.main(["generate", "--guard", "--n", "4", "--seed", "3", "--out", str(out), "--catalogue", str(cat.path)])
    assert code == 0
    summary = json.loads((out / "guard_summary.json").read_text())
    assert summary["rejected"] >= 3 and summary["kept"] == 4
    assert {r["work"]["title"] for r in summary["rejections"] if "work" in r} >= {"planted 0", "planted 1", "planted 2"}
    for f in sorted(out.glob("*.mid")):
        assert check_file(f, cat)["verdict"] == "clear"
        assert json.loads(f.with_suffix(".json").read_text())["verdict"] == "clear"
    # and the unguarded output for the same seed is flagged
    assert check_melody(raw[0], cat)["verdict"] != "clear"
    assert melody_to_midi(raw[0])[:4] == b"MThd"


def test_two_audits_cannot_share_an_output_folder(small_catalogue, tmp_path):
    import fcntl

    from melodyguard.errors import InvalidInputError

    cat, _ = small_catalogue
    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(InvalidInputError, match="another audit is writing"):
            run_audit([], cat.path, out, progress=False)


@pytest.mark.slow
def test_ctrl_c_stops_a_parallel_audit_cleanly_and_it_resumes(small_catalogue, tmp_path, rng):
    """Ctrl-C, pressed again and again, stops `audit --jobs 2` promptly and quietly: no hang in
    the pool's shutdown, no traceback, every finished file kept; a re-run checks only the rest."""
    import signal
    import subprocess
    import sys

    cat, mels = small_catalogue
    n_files = 300
    (tmp_path / "in").mkdir()
    for i in range(n_files):
        m = mels[i % len(mels)]
        notes = (m.pitches + 2, m.onsets_beats, m.durations_beats) if i % 4 == 0 else random_melody(rng, 36)
        (tmp_path / "in" / f"f{i:03d}.mid").write_bytes(melody_midi(*notes))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "melodyguard", "audit", str(tmp_path / "in"), "--out", str(out),
           "--jobs", "2", "--catalogue", str(cat.path)]
    proc = interruptible(cmd)
    results = out / "results.jsonl"
    interrupt_when(proc, lambda: results.exists() and results.read_text().count("\n") >= 3, presses=100,
                   too_soon="the audit finished before it could be interrupted; give it more files")
    _, err = proc.communicate(timeout=60)  # a pool left with a lock held would hang here
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    assert "interrupted" in err and "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    lines = results.read_text().splitlines()
    kept = [json.loads(x)["query"]["path"] for x in lines if x.endswith("}")]
    assert 3 <= len(kept) < n_files and len(set(kept)) == len(kept)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[0])
    assert summary["done"] == n_files and summary["checked_now"] == n_files - len(kept)
    assert summary["verdicts"].get("block", 0) >= n_files // 4
