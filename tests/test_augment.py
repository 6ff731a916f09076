"""The edits benchmarks disguise copies with, above all those training never sees."""

from __future__ import annotations

import numpy as np
import pytest

from melodyguard.augment import (
    LEVELS,
    UNSEEN_EDITS,
    augment,
    change_mode,
    estimate_key,
    grace_notes,
    humanize,
    split_notes,
    swing,
    unseen_edit,
)

C_MAJOR = (np.array([60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60]), np.arange(15) * 0.5,
           np.full(15, 0.5))


def collapsed(p: np.ndarray) -> list[int]:
    """Pitches with repeated notes merged."""
    return [int(x) for i, x in enumerate(p) if i == 0 or x != p[i - 1]]


def test_key_estimate_and_mode_change_both_ways():
    assert estimate_key(C_MAJOR) == (0, "major")
    minor = change_mode(C_MAJOR)
    # E, A and B (the 3rd, 6th and 7th degrees) come down a semitone; the rest stay.
    assert minor[0].tolist() == [60, 62, 63, 65, 67, 68, 70, 72, 70, 68, 67, 65, 63, 62, 60]
    assert estimate_key(minor) == (0, "minor")
    assert change_mode(minor)[0].tolist() == C_MAJOR[0].tolist()  # and back up in minor
    np.testing.assert_array_equal(minor[1], C_MAJOR[1])


def test_swing_plays_on_beat_pairs_long_short():
    p, o, d = swing(C_MAJOR)
    assert p.tolist() == C_MAJOR[0].tolist()
    # Pairs of eighths start on whole beats: 0, 2/3, 1, 1 2/3, ...; the last note has no partner.
    np.testing.assert_allclose(o[:4], [0.0, 2 / 3, 1.0, 5 / 3])
    np.testing.assert_allclose(o[::2], C_MAJOR[1][::2])
    assert (d <= np.append(np.diff(o), np.inf) + 1e-12).all()
    # Pairs that start off the beat are left alone.
    odd = (np.array([60, 62, 64, 65]), np.array([0.25, 0.75, 1.25, 1.75]), np.full(4, 0.5))
    np.testing.assert_array_equal(swing(odd)[1], odd[1])


def test_split_notes_keeps_the_tune_and_its_time():
    rng = np.random.default_rng(3)
    p, o, d = split_notes(C_MAJOR, 0.5, rng=rng)
    assert p.size > C_MAJOR[0].size  # some notes split
    assert collapsed(p) == collapsed(C_MAJOR[0])
    assert (np.diff(o) > 0).all() and o[0] == 0.0
    assert o[-1] + d[-1] <= C_MAJOR[1][-1] + C_MAJOR[2][-1] + 1e-9
    # Repeated notes merge: a tune of repeated pairs loses notes but keeps its pitches.
    rep = (np.repeat([60, 64, 67, 72], 2), np.arange(8) * 0.5, np.full(8, 0.5))
    q = split_notes(rep, 2.0, rng=np.random.default_rng(0))  # rate / 2 = 1: every pair merges
    assert q[0].tolist() == [60, 64, 67, 72]
    np.testing.assert_allclose(q[2], 1.0)


def test_grace_notes_are_short_and_just_before_their_note():
    rng = np.random.default_rng(1)
    p, o, d = grace_notes(C_MAJOR, 1.0, rng=rng)
    assert p.size == 2 * C_MAJOR[0].size - 1
    main = np.isin(o, C_MAJOR[1])
    np.testing.assert_array_equal(p[main], C_MAJOR[0])
    graces = np.flatnonzero(~main)
    assert (np.abs(p[graces] - p[graces + 1]) <= 2).all() and (p[graces] != p[graces + 1]).all()
    np.testing.assert_allclose(d[graces], 0.125)
    assert (np.diff(o) > 0).all() and (o[:-1] + d[:-1] <= o[1:] + 1e-12).all()


def test_humanize_keeps_notes_and_order_and_is_seeded():
    a = humanize(C_MAJOR, rng=np.random.default_rng(5))
    b = humanize(C_MAJOR, rng=np.random.default_rng(5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    p, o, d = a
    assert p.tolist() == C_MAJOR[0].tolist()
    assert o[0] == 0.0 and (np.diff(o) > 0).all()
    assert not np.allclose(np.diff(o), 0.5)  # not on the grid any more
    ratio = np.diff(o) / 0.5
    assert 0.5 < ratio.min() and ratio.max() < 1.6  # but near it
    assert (d > 0).all()


@pytest.mark.parametrize("kind", UNSEEN_EDITS)
def test_unseen_edits_transpose_and_change_tempo(kind):
    rng = np.random.default_rng(11)
    p, o, d = unseen_edit(C_MAJOR, kind, rng=rng)
    assert (np.diff(o) > 0).all() and (d > 0).all()
    # A transposition of 1-6 semitones: the first note (the tonic, no grace note before it) shows it.
    assert 1 <= abs(int(p[0]) - 60) <= 6
    span = (o[-1] + d[-1]) / (C_MAJOR[1][-1] + C_MAJOR[2][-1])
    assert 0.4 < span < 2.6 and abs(np.log(span)) > 0.02


def test_unknown_edits_are_refused():
    with pytest.raises(ValueError, match="unknown unseen edit"):
        unseen_edit(C_MAJOR, "reverse", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown augmentation level"):
        augment(C_MAJOR, "extreme", rng=np.random.default_rng(0))
    assert not set(UNSEEN_EDITS) & set(LEVELS)  # training's levels never include them
