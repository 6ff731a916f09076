"""The catalogue's own chance law, fitted on its works played backwards (melodyguard.decoys)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from conftest import melody_midi, random_melody

from melodyguard.cli import EXIT_ERROR, EXIT_OK, main
from melodyguard.decoys import (
    MIN_DECOY_WORKS,
    _factor,
    _tail_fit,
    catalogue_law,
    check_decoy,
    clear_catalogue_law,
    fit_catalogue_law,
    law_needs_fit,
    retrograde,
)
from melodyguard.detect import check_melody
from melodyguard.errors import CatalogueError, InvalidInputError
from melodyguard.fingerprint import Melody
from melodyguard.index import Catalogue
from melodyguard.schema import validate_report

#: stock figures of a made-up dance style: runs and arpeggios, up and down, in eighths
_FIGURES = [[0, 2, 4, 5, 7, 5, 4, 2], [7, 5, 4, 2, 0, 2, 4, 5], [0, 4, 7, 12, 7, 4, 0, 4], [12, 11, 9, 7, 5, 4, 2, 0],
            [0, 2, 4, 7, 9, 7, 4, 2], [4, 5, 7, 9, 11, 12, 11, 9]]


def stock_tune(rng: np.random.Generator, figures: int = 5) -> Melody:
    """A tune strung together from stock figures, each in a random key, with a held note between:
    the style in which chance matches run long."""
    p: list[int] = []
    d: list[float] = []
    for _ in range(figures):
        f = _FIGURES[int(rng.integers(len(_FIGURES)))]
        base = 60 + int(rng.integers(0, 7))
        p += [base + x for x in f] + [base + int(rng.choice([0, 7]))]
        d += [0.5] * len(f) + [1.0]
    o = np.concatenate([[0.0], np.cumsum(d)[:-1]])
    return Melody.from_notes(np.asarray(p), o, np.asarray(d))


@pytest.fixture(scope="module")
def stock_catalogue(tmp_path_factory, shipped_encoder):
    """A real catalogue (SQLite file) of 120 stock-figure tunes."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("stock") / "cat"
    cat = Catalogue(path, encoder=shipped_encoder)
    cat.add_melodies([{"melody": stock_tune(rng), "sha256": f"stock-{i}", "title": f"Stock {i}"} for i in range(120)])
    cat.close()
    return path


def test_retrograde_plays_the_notes_backwards():
    m = Melody.from_notes(np.array([60, 62, 67, 65]), np.array([0.0, 1.0, 1.5, 3.0]), np.array([1.0, 0.5, 1.5, 1.0]))
    r = retrograde(m)
    assert r.pitches.tolist() == [65, 67, 62, 60]
    assert np.allclose(r.durations_beats, [1.0, 1.5, 0.5, 1.0])
    assert np.allclose(r.onsets_beats, [0.0, 1.0, 2.5, 3.0])
    back = retrograde(r)
    assert back.pitches.tolist() == m.pitches.tolist() and np.allclose(back.onsets_beats, m.onsets_beats)


def test_factor_leaves_at_most_the_target_flagged():
    rng = np.random.default_rng(3)
    e = 10.0 ** rng.uniform(-9, 2, size=400)  # many decoys under the 1e-4 review threshold
    for target in (0.005, 0.01, 0.05):
        f = _factor(e, review_evalue=1e-4, target=target)
        flagged = int((e * f <= 1e-4).sum())
        assert f > 1.0 and flagged == math.floor(target * e.size)
        # the boundary sits midway (log scale) between the last decoy allowed and the next:
        # a factor smaller by more than half that gap flags one more
        es = np.sort(e)
        half_gap = math.sqrt(es[flagged] / es[flagged - 1])
        assert int((e * f / (half_gap * 1.01) <= 1e-4).sum()) > flagged
        assert int((e * f / (half_gap * 0.99) <= 1e-4).sum()) == flagged
    # decoys that already stay clear need no correction, and the law never loosens
    assert _factor(10.0 ** rng.uniform(-2, 2, size=400), review_evalue=1e-4, target=0.005) == 1.0
    # no decoy allowed: the boundary is half the smallest E-value
    e2 = np.array([1e-6, 1e-2, 1.0])
    assert _factor(e2, review_evalue=1e-4, target=0.1) == pytest.approx(1e-4 / 5e-7)


def _power_law_decoys(seed: int, *, c: float, b: float, n: int = 600) -> np.ndarray:
    """Decoy E-values with P(E <= t) = c * t**b: a shipped law whose scale is off by b."""
    return (np.random.default_rng(seed).uniform(size=n) / c) ** (1.0 / b)


def test_tail_fit_recovers_a_power_law_and_steadies_the_factor():
    # Exact power-law decoys: the fitted slope is b, and the factor lands near the true one.
    c, b = 1.0, 0.4
    true = 1e-4 / (0.005 / c) ** (1.0 / b)  # where c * E**b reaches 0.5 %
    e = _power_law_decoys(0, c=c, b=b, n=20_000)
    f, slope = _tail_fit(e, review_evalue=1e-4, target=0.005)
    assert slope == pytest.approx(b, rel=0.1) and f == pytest.approx(true, rel=0.5)

    # With 600 decoys the law's flagged share stays nearer the target with the larger of the
    # two factors than with the empirical one alone (the rate each factor really gives is
    # c * (review / factor)**b).
    def rate(f: float) -> float:
        return min(1.0, c * (1e-4 / f) ** b)

    emp, both = [], []
    for seed in range(200):
        d = _power_law_decoys(seed, c=c, b=b)
        fe = _factor(d, review_evalue=1e-4, target=0.005)
        ft = _tail_fit(d, review_evalue=1e-4, target=0.005)
        assert ft is not None
        emp.append(rate(fe))
        both.append(rate(max(fe, ft[0])))
    assert np.mean(np.asarray(both) > 0.01) < np.mean(np.asarray(emp) > 0.01)
    assert abs(np.mean(both) - 0.005) < 0.001

    # A calibrated law (P(E <= t) = t) needs no correction; too few small E-values: no fit.
    assert _tail_fit(_power_law_decoys(1, c=1.0, b=1.0), review_evalue=1e-4, target=0.005)[0] == 1.0
    assert _tail_fit(np.full(600, 0.5), review_evalue=1e-4, target=0.005) is None
    assert _tail_fit(np.r_[np.full(20, 1e-6), np.full(580, 2.0)], review_evalue=1e-4, target=0.005) is None
    # An extreme tail gives a huge but finite factor (the factor is clamped, never overflows).
    flat = 10.0 ** np.r_[np.linspace(-300, -299, 60), np.full(540, 2.0)]
    f_flat = _tail_fit(flat, review_evalue=1e-4, target=0.005)
    assert f_flat is not None and math.isfinite(f_flat[0]) and f_flat[0] >= 1.0


def test_fitted_law_is_stored_and_multiplies_every_evalue(stock_catalogue, shipped_encoder, tmp_path):
    cat = Catalogue(stock_catalogue, encoder=shipped_encoder)
    clear_catalogue_law(cat)
    # The stock style makes chance matches: under the shipped law many decoys are flagged.
    law = fit_catalogue_law(cat, decoys=MIN_DECOY_WORKS, target=0.01, seed=0)
    info = law.info
    assert info["decoys"] == MIN_DECOY_WORKS and info["works"] == 120
    assert info["flagged_before"] > 0.05, info
    assert law.factor > 1.0 and info["flagged_after"] <= 0.01
    assert law.factor == max(info["factor_empirical"], info["factor_tail_fit"] or 1.0)
    assert info["format"] == 2
    cat.close()
    # Stored in the SQLite file: another process (a new Catalogue) sees it.
    cat2 = Catalogue(stock_catalogue, encoder=shipped_encoder)
    again = catalogue_law(cat2)
    assert again is not None and again.factor == pytest.approx(law.factor)
    query = cat2.melody(cat2.works()[5].id)  # a copy of a work: strong matches, and chance ones
    with_law = check_melody(query, cat2)
    shipped = check_melody(query, cat2, law="shipped")
    assert with_law["catalogue"]["law"]["source"] == "catalogue decoys"
    assert with_law["catalogue"]["law"]["factor"] == pytest.approx(law.factor, rel=1e-3)
    assert shipped["catalogue"]["law"] == {"source": "shipped", "factor": 1.0}
    validate_report(with_law)
    validate_report(shipped)
    e_law = {m["work"]["id"]: m["score"]["evalue"] for m in with_law["matches"]}
    e_shipped = {m["work"]["id"]: m["score"]["evalue"] for m in shipped["matches"]}
    both = [w for w in e_law if w in e_shipped and e_shipped[w] * law.factor < 1.0]
    assert both, (with_law["matches"], shipped["matches"])
    for w in both:
        assert e_law[w] == pytest.approx(e_shipped[w] * law.factor, rel=2e-3)
    assert [m["work"]["id"] for m in with_law["matches"]][:1] == [m["work"]["id"] for m in shipped["matches"]][:1]
    # Forgetting it restores the shipped law.
    assert clear_catalogue_law(cat2) is True
    assert catalogue_law(cat2) is None and clear_catalogue_law(cat2) is False
    assert check_melody(query, cat2)["catalogue"]["law"]["source"] == "shipped"
    cat2.close()


def test_law_of_another_shipped_law_or_encoder_is_not_used(stock_catalogue, shipped_encoder):
    cat = Catalogue(stock_catalogue, encoder=shipped_encoder)
    law = fit_catalogue_law(cat, decoys=MIN_DECOY_WORKS, seed=1)
    assert catalogue_law(cat) is not None
    for key, value in (("shipped_law", "0" * 16), ("encoder", "other-weights"), ("format", 99)):
        cat.set_meta("null_law", json.dumps({**law.info, key: value}))
        assert catalogue_law(cat) is None, key
        assert check_melody(stock_tune(np.random.default_rng(5)), cat)["catalogue"]["law"]["source"] == "shipped"
    cat.set_meta("null_law", "{not json")
    assert catalogue_law(cat) is None
    clear_catalogue_law(cat)
    cat.close()


def test_bad_settings_and_small_catalogues_are_refused(stock_catalogue, shipped_encoder, tmp_path, rng):
    cat = Catalogue(stock_catalogue, encoder=shipped_encoder)
    for bad in (50, 100.0, True):
        with pytest.raises(InvalidInputError, match="decoys"):
            fit_catalogue_law(cat, decoys=bad)
    for bad in (0, 0.5, -0.1, float("nan")):
        with pytest.raises(InvalidInputError, match="target"):
            fit_catalogue_law(cat, target=bad)
    with pytest.raises(InvalidInputError, match="law"):
        check_melody(stock_tune(rng), cat, law="mine")
    with pytest.raises(CatalogueError, match="meta entry"):
        cat.set_meta("encoder", "x")
    cat.close()
    small = Catalogue(tmp_path / "small", encoder=shipped_encoder)
    small.add_melodies([{"melody": stock_tune(rng), "sha256": f"s{i}"} for i in range(10)])
    before = small.count()
    with pytest.raises(CatalogueError, match="at least 100 works"):
        fit_catalogue_law(small, decoys=MIN_DECOY_WORKS)
    assert small.count() == before and catalogue_law(small) is None
    small.close()


def test_calibrate_command(stock_catalogue, capsys):
    args = ["calibrate", "--catalogue", str(stock_catalogue), "--quiet"]
    assert main(args + ["--clear"]) == EXIT_OK
    capsys.readouterr()
    assert main(args + ["--show"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"source": "shipped", "factor": 1.0}
    assert main(args + ["--decoys", "100", "--seed", "2"]) == EXIT_OK

    def strict(name: str):  # NaN or Infinity: not JSON
        raise AssertionError(f"calibrate printed {name}")

    fitted = json.loads(capsys.readouterr().out, parse_constant=strict)
    assert fitted["decoys"] == 100 and fitted["factor"] >= 1.0 and fitted["seed"] == 2
    assert main(args + ["--show"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["factor"] == fitted["factor"]
    assert main(args + ["--decoys", "10"]) == EXIT_ERROR
    assert "decoys must be" in capsys.readouterr().err
    assert main(args + ["--clear"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"cleared": True}


def test_add_fits_the_law_when_the_catalogue_reaches_100_works(tmp_path, capsys, shipped_encoder):
    rng = np.random.default_rng(11)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(MIN_DECOY_WORKS + 2):
        m = stock_tune(rng)
        (folder / f"t{i:03d}.mid").write_bytes(melody_midi(m.pitches, m.onsets_beats, m.durations_beats))
    files = sorted(folder.iterdir())
    base = ["--catalogue", str(tmp_path / "cat"), "--quiet"]

    def add(*args: str) -> dict:
        assert main(["add", *args, *base]) == EXIT_OK
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    first = add(*map(str, files[:MIN_DECOY_WORKS]), "--no-calibrate")
    assert first["works"] == MIN_DECOY_WORKS and first["law"] == {"source": "shipped", "factor": 1.0}
    second = add(str(files[MIN_DECOY_WORKS]))  # no law yet and 101 works: fitted now
    assert second["law"]["source"] == "catalogue decoys" and second["law"]["fitted_now"] is True
    assert second["law"]["decoys"] == MIN_DECOY_WORKS + 1 and second["law"]["factor"] >= 1.0
    third = add(str(files[MIN_DECOY_WORKS + 1]))  # fitted on 101 works; 102 is not double: kept
    assert third["law"]["fitted_now"] is False and third["law"]["fitted_at"] == second["law"]["fitted_at"]

    # `remove` refits when the catalogue has halved since the fit (here: a law said to be
    # fitted on 204 works), unless told not to.
    def pretend_fitted_on(works: int) -> int:
        cat = Catalogue(tmp_path / "cat", encoder=shipped_encoder)
        info = json.loads(cat.get_meta("null_law"))
        cat.set_meta("null_law", json.dumps({**info, "works": works}))
        first_id = cat.works()[0].id
        cat.close()
        return first_id

    wid = pretend_fitted_on(204)
    assert main(["remove", str(wid), "--no-calibrate", *base]) == EXIT_OK
    kept = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert kept["works"] == MIN_DECOY_WORKS + 1 and kept["law"]["fitted_now"] is False
    assert kept["law"]["fitted_works"] == 204
    wid = pretend_fitted_on(202)
    assert main(["remove", str(wid), *base]) == EXIT_OK
    refit = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert refit["works"] == MIN_DECOY_WORKS and refit["law"]["fitted_now"] is True
    assert refit["law"]["fitted_works"] == MIN_DECOY_WORKS and refit["law"]["decoys"] == MIN_DECOY_WORKS


def test_law_is_fitted_again_when_the_catalogue_doubles_or_halves(stock_catalogue, shipped_encoder):
    cat = Catalogue(stock_catalogue, encoder=shipped_encoder)  # 120 works
    clear_catalogue_law(cat)
    assert law_needs_fit(cat)
    law = fit_catalogue_law(cat, decoys=MIN_DECOY_WORKS, seed=3)
    assert not law_needs_fit(cat)
    for works, stale in ((60, True), (61, False), (239, False), (240, True)):
        cat.set_meta("null_law", json.dumps({**law.info, "works": works}))
        assert law_needs_fit(cat) is stale, works
    # A law of the previous format stays in force (it is never stricter) but is fitted again.
    cat.set_meta("null_law", json.dumps({**law.info, "format": 1}))
    old = catalogue_law(cat)
    assert old is not None and old.factor == pytest.approx(law.factor) and law_needs_fit(cat)
    clear_catalogue_law(cat)
    cat.close()


def test_a_decoy_leaves_out_its_source_and_the_relatives_of_its_source(tmp_path, shipped_encoder):
    """A palindrome played backwards is itself: against a catalogue holding a variant of it, the
    decoy would 'copy' the variant. check_decoy leaves out the source and every work the review
    threshold calls a relative of the source, and nothing else."""
    rng = np.random.default_rng(21)
    hp, _, hd = random_melody(rng, 16)
    p, d = np.r_[hp, hp[::-1]], np.r_[hd, hd[::-1]]
    pal = Melody.from_notes(p, np.r_[0.0, np.cumsum(d)[:-1]], d)
    variant = Melody.from_notes(p + 2, pal.onsets_beats * 2, pal.durations_beats * 2)  # transposed, slower
    others = [Melody.from_notes(*random_melody(rng, 40)) for _ in range(8)]
    cat = Catalogue(tmp_path / "c", encoder=shipped_encoder)
    ids = [w.id for w in cat.add_melodies([{"melody": m, "sha256": f"w{i}"} for i, m in enumerate([pal, variant, *others])])]
    plain = check_melody(retrograde(pal), cat, exclude_work=ids[0], law="shipped")
    assert plain["matches"][0]["work"]["id"] == ids[1] and plain["verdict"] == "block"  # the variant, "copied"
    rep, rel = check_decoy(pal, cat, source=ids[0])
    assert rel == {ids[1]}
    assert ids[0] not in [m["work"]["id"] for m in rep["matches"]] and ids[1] not in [m["work"]["id"] for m in rep["matches"]]
    assert rep["verdict"] == "clear"
    cat.close()


_HOLD_LEASE = """
import sys, time
from melodyguard.index import Catalogue
cat = Catalogue(sys.argv[1])
assert cat.claim_lease("law_fit_lease", "other-process", seconds=60, note={"done": 7, "total": 100}) is None
print("held", flush=True)
sys.stdin.readline()  # hold it until told
print("released" if cat.release_lease("law_fit_lease", "other-process") else "lost", flush=True)
"""


def test_one_law_fit_at_a_time_across_processes(stock_catalogue, shipped_encoder, capsys):
    """A fit that stores its law holds the catalogue's lease: while another process holds it, a
    fit here is refused with LawFitBusyError (naming that process and its progress) and stores
    nothing, and `add`/`remove` go on without fitting; once released, the fit runs and leaves no
    lease behind."""
    import subprocess
    import sys

    from melodyguard.decoys import law_fit_under_way
    from melodyguard.errors import LawFitBusyError

    cat = Catalogue(stock_catalogue, encoder=shipped_encoder)
    clear_catalogue_law(cat)
    with subprocess.Popen([sys.executable, "-c", _HOLD_LEASE, str(stock_catalogue)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "held"
        under_way = law_fit_under_way(cat)
        assert under_way == {"done": 7, "total": 100, "pid": holder.pid, "host": under_way["host"]}
        with pytest.raises(LawFitBusyError, match=rf"pid {holder.pid} .*7 of 100 decoys") as exc:
            fit_catalogue_law(cat, decoys=MIN_DECOY_WORKS)
        assert exc.value.holder["holder"] == "other-process"
        assert catalogue_law(cat) is None and law_needs_fit(cat)  # nothing stored
        # `remove` (like `add`) leaves the fit to the other process and says so.
        wid = cat.add_melodies([{"melody": stock_tune(np.random.default_rng(99)), "sha256": "extra"}])[0].id
        assert main(["remove", str(wid), "--catalogue", str(stock_catalogue)]) == EXIT_OK
        out = capsys.readouterr()
        assert "calibrate: skipped: another fit of this catalogue's chance law is under way" in out.err
        assert json.loads(out.out.strip().splitlines()[-1])["law"] == {"source": "shipped", "factor": 1.0}
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        holder.stdin.close()
        assert holder.wait(30) == 0
    assert law_fit_under_way(cat) is None
    law = fit_catalogue_law(cat, decoys=MIN_DECOY_WORKS, seed=4)
    assert catalogue_law(cat).info["fitted_at"] == law.info["fitted_at"]
    assert law_fit_under_way(cat) is None and cat.lease("law_fit_lease") is None  # released
    clear_catalogue_law(cat)
    cat.close()


def test_a_fit_that_lost_its_lease_stores_nothing(stock_catalogue, shipped_encoder):
    """A fit stalled past its lease, which another process took over, must not overwrite that
    process's law: it checks the lease is still its own before storing."""
    from melodyguard.errors import LawFitBusyError

    cat = Catalogue(stock_catalogue, encoder=shipped_encoder)
    clear_catalogue_law(cat)

    def take_over(done: int, total: int) -> None:
        if done == total:  # as if this fit stalled and the lease ran out: another one takes it
            cat.set_meta("law_fit_lease", json.dumps({"holder": "usurper", "pid": 1, "host": "h", "since": 0,
                                                      "until": 4e9, "note": {"done": 3, "total": 100}}))

    with pytest.raises(LawFitBusyError, match="pid 1 on h, 3 of 100"):
        fit_catalogue_law(cat, decoys=MIN_DECOY_WORKS, progress=take_over)
    assert catalogue_law(cat) is None and cat.lease("law_fit_lease")["holder"] == "usurper"  # not released
    cat.delete_meta("law_fit_lease")
    cat.close()


def test_catalogue_leases(tmp_path, shipped_encoder):
    """Leases in the catalogue's SQLite file: one holder at a time across connections, renewed by
    their holder, taken over when they run out or cannot be read, released only by their holder."""
    from melodyguard.errors import ConfigError

    a = Catalogue(tmp_path / "c", encoder=shipped_encoder)
    b = Catalogue(tmp_path / "c", encoder=shipped_encoder)  # another connection to the same file
    assert a.claim_lease("law_fit_lease", "A", seconds=30, note={"done": 1}) is None
    held = b.claim_lease("law_fit_lease", "B", seconds=30)
    assert held["holder"] == "A" and held["note"] == {"done": 1} and held["until"] > time.time() + 20
    since = held["since"]
    assert a.claim_lease("law_fit_lease", "A", seconds=30, note={"done": 2}) is None  # renewed
    assert b.lease("law_fit_lease")["note"] == {"done": 2} and b.lease("law_fit_lease")["since"] == since
    assert b.release_lease("law_fit_lease", "B") is False and b.lease("law_fit_lease")["holder"] == "A"
    assert a.release_lease("law_fit_lease", "A") is True and b.lease("law_fit_lease") is None
    assert a.claim_lease("law_fit_lease", "A", seconds=0.2) is None
    time.sleep(0.3)  # A's process "died": its lease runs out
    assert a.lease("law_fit_lease") is None and b.claim_lease("law_fit_lease", "B", seconds=30) is None
    a.set_meta("law_fit_lease", "{not json")
    assert a.lease("law_fit_lease") is None and a.claim_lease("law_fit_lease", "A", seconds=30) is None
    with pytest.raises(ConfigError, match="positive number of seconds"):
        a.claim_lease("law_fit_lease", "A", seconds=0)
    with pytest.raises(CatalogueError, match="not a meta entry"):
        a.claim_lease("generation", "A", seconds=30)
    a.close()
    b.close()
