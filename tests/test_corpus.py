"""The corpus cache: export from music21, resume, split rules, bar numbers from the score."""

from __future__ import annotations

import pytest

from melodyguard.corpus import _split_of, build_corpus, list_units, load_corpus

music21 = pytest.importorskip("music21")


def test_export_resumes_and_loads(tmp_path):
    db = tmp_path / "corpus.sqlite"
    first = build_corpus(db, collections=["ryansMammoth", "essenFolksong"], limit=6, jobs=1, progress=False)
    assert (first["units"], first["parsed"], first["reused"]) == (6, 6, 0)
    again = build_corpus(db, collections=["ryansMammoth", "essenFolksong"], limit=6, jobs=1, progress=False)
    assert (again["parsed"], again["reused"]) == (0, 6)
    tunes = load_corpus(db)
    assert len(tunes) == 6
    assert {t.collection for t in tunes} == {"ryansMammoth", "essenFolksong"}  # --limit interleaves collections
    assert all(t.split == "heldout" for t in tunes if t.collection == "essenFolksong")
    for t in tunes:
        m = t.melody
        assert len(m) >= 8 and t.title
        assert m.bars.min() >= 0 and (m.bars[1:] >= m.bars[:-1]).all()  # printed bar numbers never go back
        assert (m.beats_in_bar >= -1e-6).all()


def test_split_rules():
    assert _split_of("essenFolksong/x.abc#1", "essenFolksong") == "heldout"
    assert _split_of("airdsAirs/x.abc#1", "airdsAirs") == "heldout"
    splits = {_split_of(f"oneills1850/f.abc#{i}", "oneills1850") for i in range(200)}
    assert splits == {"train", "valid"}


def test_units_interleave_collections():
    units = list_units(["ryansMammoth", "bach"])
    assert [u[1] for u in units[:4]] == ["ryansMammoth", "bach", "ryansMammoth", "bach"]


def test_voices_of_a_mass_are_held_out_tunes_that_name_their_mass(tmp_path):
    """Every voice of a Palestrina movement becomes one tune; a re-run reuses the movement."""
    db = tmp_path / "corpus.sqlite"
    first = build_corpus(db, collections=["palestrina"], limit=1, jobs=1, progress=False)
    assert first["units"] == 1 and first["parsed"] >= 4 and first["failed"] == 0
    again = build_corpus(db, collections=["palestrina"], limit=1, jobs=1, progress=False)
    assert (again["parsed"], again["reused"]) == (0, 1)
    tunes = load_corpus(db)
    assert len(tunes) == first["parsed"]
    assert len({t.key for t in tunes}) == len(tunes) and all(":v" in t.key for t in tunes)
    assert {t.split for t in tunes} == {"heldout"}
    works = {t.melody.info["work"] for t in tunes}
    assert len(works) == 1 and works.pop().startswith("Missa")
    assert len({tuple(t.melody.pitches[:12]) for t in tunes}) == len(tunes)  # distinct voices, not one part copied
    assert all(t.title.startswith("Missa") for t in tunes)


def test_default_export_leaves_out_the_other_style():
    assert "palestrina" not in {u[1] for u in list_units()[:2000]}


@pytest.mark.slow
def test_ctrl_c_keeps_the_exported_tunes_and_a_rerun_resumes(tmp_path):
    """Ctrl-C, pressed again and again, stops a parallel export promptly with a message and no
    traceback (from the workers or from exit handlers); the tunes parsed so far are in the cache
    (not only the last 100-row batch), and a re-run parses only the rest."""
    import re
    import sqlite3
    import sys
    import threading
    from pathlib import Path

    from conftest import interrupt_when, interruptible

    db, limit = tmp_path / "corpus.sqlite", 120
    colls = ["ryansMammoth", "essenFolksong"]
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_corpus.py"
    cmd = [sys.executable, str(script), "--out", str(db), "--limit", str(limit), "--jobs", "2",
           "--collections", *colls]
    proc = interruptible(cmd)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()

    def parsed_enough() -> bool:
        done = [int(x) for x in re.findall(rf"(\d+)/{limit}", "".join(err))]
        return bool(done) and max(done) >= 16

    interrupt_when(proc, parsed_enough, presses=50, poll=0.02,
                   too_soon="the export finished before it could be interrupted; raise the limit")
    out, _ = proc.communicate(timeout=60)  # a pool shutdown broken by a second Ctrl-C could hang here
    reader.join(timeout=10)
    text = "".join(err)
    assert proc.returncode == 130, text[-2000:]
    assert "interrupted" in text and "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]
    with sqlite3.connect(db) as con:
        kept = con.execute("SELECT COUNT(*) FROM tunes").fetchone()[0]
    assert 16 <= kept < limit  # fewer than a 100-row batch: only the commit on interruption stored them
    again = build_corpus(db, collections=colls, limit=limit, jobs=2, progress=False)
    assert again["reused"] == kept and again["parsed"] + again["failed"] == limit - kept
