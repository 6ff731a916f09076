"""The VAE: training loop, embedding shapes and determinism, versioned weights, generation."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pretty_midi
import pytest
import torch
from conftest import melody_midi, random_melody

from melodyguard import Melody, cli
from melodyguard.corpus import HELDOUT_COLLECTIONS
from melodyguard.errors import ConfigError, IndexVersionError, ModelVersionError
from melodyguard.fingerprint import extract_melody
from melodyguard.model.config import preset
from melodyguard.model.encoder import Encoder, record_evaluation
from melodyguard.model.train import PHASE1, PHASE2, TrainConfig, train_vae


def test_training_resumes_from_checkpoint(tmp_path, rng):
    mels = [Melody.from_notes(*random_melody(rng, 24)) for _ in range(6)]
    cfg = TrainConfig(steps=2, batch_size=8, threads=1, checkpoint_every=1)
    _, s1 = train_vae(mels, model_config=preset("tiny"), train_config=cfg, run_dir=tmp_path, progress=False)
    assert s1["steps"] == 2 and (tmp_path / "checkpoint.pt").exists()
    cfg2 = TrainConfig(steps=4, batch_size=8, threads=1, checkpoint_every=1)
    _, s2 = train_vae(mels, model_config=preset("tiny"), train_config=cfg2, run_dir=tmp_path, progress=False)
    assert s2["steps"] == 4
    assert all(np.isfinite(v) for v in s2["final"].values())


def test_fingerprint_first_phase_trains_only_the_fingerprint_path(tmp_path, rng):
    """``reconstruction=False`` trains the contrastive term alone: the fingerprint path moves,
    the decoder and the variances stay as initialised, and the loss is the contrastive term.
    With the fingerprint frozen too there would be nothing to train, which is refused."""
    from melodyguard.model.train import WindowSampler, vae_loss
    from melodyguard.model.vae import MelodyVAE

    mels = [Melody.from_notes(*random_melody(rng, 24)) for _ in range(6)]
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in MelodyVAE(preset("tiny")).state_dict().items()}
    cfg = TrainConfig(steps=3, batch_size=8, threads=1, reconstruction=False)
    model, summary = train_vae(mels, model_config=preset("tiny"), train_config=cfg, run_dir=tmp_path / "a",
                               progress=False, init_state=init)
    assert set(summary["final"]) == {"loss", "con", "top1"}
    fp = {k for k, _ in model.fingerprint_parameters()}
    state = model.state_dict()
    moved = {k for k in state if not torch.equal(state[k], init[k])}
    assert moved and moved <= fp and "encoder.layers.0.linear1.weight" in moved
    assert torch.equal(state["to_logvar.weight"], init["to_logvar.weight"])
    # the loss is the joint loss's contrastive term, computed the same way
    sampler = WindowSampler(mels, length=16, seed=1)
    batch = sampler.sample(8, levels=cfg.levels, short_prob=cfg.short_prob)
    model.eval()
    with torch.no_grad():
        loss, m = vae_loss(model, batch, cfg=cfg, beta=0.0)
        _, joint = vae_loss(model, batch, cfg=dataclasses.replace(cfg, reconstruction=True), beta=0.0)
    assert float(loss) == pytest.approx(m["con"]) and m["con"] == pytest.approx(joint["con"], rel=1e-5)
    with pytest.raises(ConfigError, match="nothing to train"):
        train_vae(mels, model_config=preset("tiny"), train_config=dataclasses.replace(cfg, freeze_fingerprint=True),
                  run_dir=tmp_path / "b", progress=False, init_state=init)


def test_views_without_the_shift_start_on_their_window_s_own_note(rng):
    """``shift=False`` (the first phase's second stage): view B starts on A's own note, so an
    unedited view is A itself; with the shift, about two in three views start a note away."""
    from melodyguard.model.train import WindowSampler

    mels = [Melody.from_notes(*random_melody(rng, 40)) for _ in range(5)]
    same = {}
    for shift in (False, True):
        sampler = WindowSampler(mels, length=16, seed=3)
        b = sampler.sample(300, levels=(("none", 1.0),), short_prob=0.0, shift=shift)
        same[shift] = ((b["a_pitch"] == b["b_pitch"]) & (b["a_rhythm"] == b["b_rhythm"])).all(1).float().mean()
    assert same[False] == 1.0
    assert 0.2 < same[True] < 0.6


def test_embedding_shapes_norm_and_determinism(tiny_weights, rng):
    enc = Encoder.load(tiny_weights)
    mel = Melody.from_notes(*random_melody(rng, 40))
    e1 = enc.embed(mel)
    e2 = enc.embed(mel)
    assert e1.vectors.shape == (40 - 16 + 1, enc.dim) and e1.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e1.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(e1.vectors, e2.vectors)
    assert list(e1.windows.start) == list(range(25))


def test_windows_cut_to_their_notes_embed_as_padded_ones(shipped_encoder, rng):
    """Embedding groups windows by width and cuts the trailing padding; the encoder masks
    padding, so each vector is the one the full padded batch gives, in the input's order."""
    from melodyguard.fingerprint.windows import (
        PITCH_PAD,
        WindowConfig,
        Windows,
        short_windows,
        window_melody,
    )

    mels = [Melody.from_notes(*random_melody(rng, n)) for n in (9, 13, 40)]
    w = Windows.concat([window_melody(m, config=WindowConfig(length=16, hop=1, min_notes=8)) for m in mels]
                       + [short_windows(mels[2], length=16, n_notes=10)])
    perm = rng.permutation(len(w.pitch))  # widths interleaved
    pitch, rhythm = w.pitch[perm], w.rhythm[perm]
    assert len({int((row != PITCH_PAD).sum()) for row in pitch}) >= 4
    got = shipped_encoder.embed_tokens(pitch, rhythm, batch_size=7)
    with torch.inference_mode():
        mu = shipped_encoder.model.encode_fingerprint(torch.from_numpy(pitch), torch.from_numpy(rhythm))
        want = torch.nn.functional.normalize(mu, dim=-1).numpy()
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert shipped_encoder.embed_tokens(pitch[:0], rhythm[:0]).shape == (0, shipped_encoder.dim)


def test_save_load_round_trip(tiny_weights, tmp_path, rng):
    a = Encoder.load(tiny_weights)
    for f in (tiny_weights, tiny_weights.with_suffix(".manifest.json")):
        shutil.copy(f, tmp_path / f.name)
    b = Encoder.load(tmp_path / tiny_weights.name)
    mel = Melody.from_notes(*random_melody(rng, 30))
    np.testing.assert_array_equal(a.embed(mel).vectors, b.embed(mel).vectors)
    assert b.manifest["preset"] == "tiny" and b.manifest["latent_dim"] == 8


def _copy(tiny_weights, tmp_path):
    w = tmp_path / "w.pt"
    shutil.copy(tiny_weights, w)
    shutil.copy(tiny_weights.with_suffix(".manifest.json"), tmp_path / "w.manifest.json")
    return w, tmp_path / "w.manifest.json"


def test_manifest_refuses_corrupt_weights(tiny_weights, tmp_path):
    w, _ = _copy(tiny_weights, tmp_path)
    data = bytearray(w.read_bytes())
    data[-20] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelVersionError, match="checksum"):
        Encoder.load(w)


@pytest.mark.parametrize("field,value,msg", [
    ("window_format_version", 999, "window format"),
    ("format_version", 999, "model format"),
])
def test_manifest_refuses_version_mismatch(tiny_weights, tmp_path, field, value, msg):
    w, m = _copy(tiny_weights, tmp_path)
    man = json.loads(m.read_text())
    man[field] = value
    m.write_text(json.dumps(man))
    with pytest.raises(ModelVersionError, match=msg):
        Encoder.load(w)


def test_manifest_missing(tiny_weights, tmp_path):
    w, m = _copy(tiny_weights, tmp_path)
    m.unlink()
    with pytest.raises(ModelVersionError, match="no manifest"):
        Encoder.load(w)


def test_evaluation_is_recorded_in_the_manifest_for_these_weights_only(tiny_weights, tmp_path):
    w, m = _copy(tiny_weights, tmp_path)
    before = w.read_bytes()
    record_evaluation(w, {"model": {"recon_note_accuracy": 0.5}}, command="bench")
    man = json.loads(m.read_text())
    assert man["evaluation"] == {"weights_sha256": man["sha256"], "command": "bench",
                                 "model": {"recon_note_accuracy": 0.5}}
    assert w.read_bytes() == before and Encoder.load(w).manifest["evaluation"]["command"] == "bench"
    w.write_bytes(before[:-1] + bytes([before[-1] ^ 0xFF]))
    with pytest.raises(ModelVersionError, match="not recording"):
        record_evaluation(w, {"model": {}}, command="bench")
    assert json.loads(m.read_text())["evaluation"]["command"] == "bench"


def test_generate_cli_writes_readable_midi(tiny_weights, tmp_path, capsys):
    out = tmp_path / "g"
    assert cli.main(["generate", "--n", "3", "--out", str(out), "--bars", "4", "--weights", str(tiny_weights)]) == 0
    files = sorted(out.glob("*.mid"))
    assert len(files) == 3
    for f in files:
        pm = pretty_midi.PrettyMIDI(str(f))
        assert pm.instruments and pm.get_end_time() > 0
        mel = extract_melody(f, min_notes=1)
        assert mel.duration_beats <= 16.0 + 1e-6


def test_generate_is_seeded(tiny_weights, tmp_path):
    for d in ("a", "b"):
        assert cli.main(["generate", "--n", "2", "--out", str(tmp_path / d), "--seed", "5", "--weights", str(tiny_weights)]) == 0
    for fa, fb in zip(sorted((tmp_path / "a").glob("*.mid")), sorted((tmp_path / "b").glob("*.mid"))):
        np.testing.assert_array_equal(extract_melody(fa, min_notes=1).pitches, extract_melody(fb, min_notes=1).pitches)


def test_shipped_weights_manifest_and_invariance(shipped_encoder, rng):
    """The shipped weights: both phases trained without the held-out collections, the fingerprint
    of the first phase, a fitted generation prior, and a decoder that reconstructs from mu."""
    from melodyguard.fingerprint.windows import PITCH_PAD

    man = shipped_encoder.manifest
    assert man["preset"] == "default-detail" and man["training"]["init_from"]["preset"] == "default"
    assert man["training"]["init_from"]["frozen_fingerprint"] is True
    # every phase and stage, down the chain of initial weights, trained on licensed collections
    stages, training = [], man["training"]
    while training is not None:
        stages.append(training)
        training = training.get("init_from", {}).get("training")
    # ... and they are the recipe that `melodyguard train` runs: PHASE1's stages, then PHASE2
    recipe = [*PHASE1["default"], PHASE2["default-detail"]]
    assert len(stages) == len(recipe)
    for got, want in zip(reversed(stages), recipe):
        for key in ("steps", "lr", "shift", "temperature", "reconstruction", "freeze_fingerprint", "beta"):
            # the first stage predates the `shift` setting: absent, it is the default (True)
            assert got["train_config"].get(key, getattr(TrainConfig(), key)) == getattr(want, key), key
    for data in (t["data"] for t in stages):
        assert not set(data["collections"]) & set(HELDOUT_COLLECTIONS)
        assert "essen" not in json.dumps(data).lower().replace("never essen", "")
    assert man["fingerprint_id"] == shipped_encoder.fingerprint
    ev = man["evaluation"]  # held-out figures of these very weights (benchmark.py --record-manifest)
    assert ev["weights_sha256"] == man["sha256"] and "heldout" in ev["split"]
    assert ev["model"]["recon_note_accuracy"] >= 0.9 and ev["model"]["active_dims"]
    assert {"window_top1_light", "window_top1_medium", "embed_windows_per_s"} <= set(ev["model"])
    assert not torch.equal(shipped_encoder.model.prior_scale, torch.eye(shipped_encoder.latent_dim))
    w = shipped_encoder.embed(Melody.from_notes(*random_melody(rng, 60))).windows
    rp, rr = shipped_encoder.reconstruct(w.pitch, w.rhythm)
    real = w.pitch != PITCH_PAD
    assert ((rp == w.pitch) & (rr == w.rhythm))[real].mean() >= 0.9
    p, o, d = random_melody(rng, 40)
    base = shipped_encoder.embed(Melody.from_notes(p, o, d)).vectors
    moved = shipped_encoder.embed(Melody.from_notes(p + 5, o * 1.5, d * 1.5)).vectors
    np.testing.assert_allclose(base, moved, atol=1e-6)


def test_second_phase_keeps_the_fingerprint_and_the_catalogue(tiny_weights, tmp_path, rng):
    """Retraining the decoder with the fingerprint frozen changes the weights but not one
    fingerprint bit, so a catalogue built with the first weights opens with the second."""
    from melodyguard.index.store import Catalogue
    from melodyguard.model.training_job import run_training

    midi = tmp_path / "midi"
    midi.mkdir()
    for i in range(6):
        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(0)
        p, o, d = random_melody(rng, 28)
        inst.notes = [pretty_midi.Note(velocity=90, pitch=int(a), start=float(b) / 2, end=float(b + c) / 2)
                      for a, b, c in zip(p, o, d)]
        pm.instruments.append(inst)
        pm.write(str(midi / f"m{i}.mid"))
    out = tmp_path / "phase2.pt"
    man = run_training(preset="tiny-detail", midi_dir=midi, run_dir=tmp_path / "run", out=out,
                       init_from=tiny_weights, freeze_fingerprint=True, progress=False)
    a, b = Encoder.load(tiny_weights), Encoder.load(out)
    assert a.manifest["sha256"] != b.manifest["sha256"]
    assert man["training"]["init_from"]["sha256"] == a.manifest["sha256"]
    assert b.latent_dim == 12 and b.dim == a.dim == 8
    # the decoder and the detail encoder did train
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert not torch.equal(sa["decoder.layers.0.linear1.weight"], sb["decoder.layers.0.linear1.weight"])
    mel = Melody.from_notes(*random_melody(rng, 40))
    np.testing.assert_array_equal(a.embed(mel).vectors, b.embed(mel).vectors)
    assert a.fingerprint == b.fingerprint == man["fingerprint_id"]

    cat_dir = tmp_path / "cat"
    with Catalogue(cat_dir, encoder=a) as cat:
        wid = cat.add_melody(mel, sha256="0" * 64, title="x").id
        n_vectors = cat.index()[0].ntotal
    with Catalogue(cat_dir, encoder=b) as cat:
        assert [w.id for w in cat.works()] == [wid] and cat.index()[0].ntotal == n_vectors
    w = b.embed(mel).windows
    mu, _ = b.model.encode(torch.from_numpy(w.pitch[:2]), torch.from_numpy(w.rhythm[:2]))
    assert mu.shape == (2, 12)
    # another first phase (a different fingerprint) is refused by that catalogue
    other = tmp_path / "other.pt"
    run_training(preset="tiny", midi_dir=midi, run_dir=tmp_path / "run2", out=other, steps=2, seed=3, progress=False)
    with pytest.raises(IndexVersionError, match="encoder"):
        Catalogue(cat_dir, encoder=Encoder.load(other))


def _tiny_two_phase(tmp_path, rng):
    """Four generated MIDI files, and ``train(name)``: ``tiny-detail`` trained on them (2 steps per
    stage and phase, one run directory) into ``tmp_path / name``. Returns ``(run_dir, train)``."""
    from melodyguard.model.training_job import run_training

    midi = tmp_path / "midi"
    midi.mkdir()
    for i in range(4):
        (midi / f"m{i}.mid").write_bytes(melody_midi(*random_melody(rng, 28)))
    run = tmp_path / "run"

    def train(name: str) -> dict:
        return run_training(preset="tiny-detail", midi_dir=midi, run_dir=run, out=tmp_path / name, steps=2,
                            batch_size=8, progress=False)

    return run, train


def test_two_phase_preset_trains_both_phases_in_one_run(tmp_path, rng):
    """A two-phase preset without --init-from trains its first phase (the fingerprint alone),
    then the second from it with the fingerprint frozen; a second run reuses the finished
    first phase."""
    run, train = _tiny_two_phase(tmp_path, rng)
    man = train("w.pt")
    first = Encoder.load(run / "phase1.pt")
    assert first.config.name == "tiny" and first.manifest["training"]["steps"] == 2
    # the first phase trains the fingerprint alone (PHASE1), each edited view starting on its
    # window's own note, at contrastive temperature 0.05; then the second phase trains the decoder
    tc = first.manifest["training"]["train_config"]
    assert tc["reconstruction"] is False and tc["shift"] is False and tc["temperature"] == 0.05
    assert len(PHASE1["tiny"]) == len(PHASE1["default"]) and not (run / "phase1b.pt").exists()
    assert man["training"]["init_from"]["sha256"] == first.manifest["sha256"]
    assert man["training"]["train_config"]["reconstruction"] is True
    assert man["training"]["train_config"]["freeze_fingerprint"] is True
    assert man["preset"] == "tiny-detail" and man["training"]["steps"] == 2
    assert man["training"]["init_from"]["preset"] == "tiny" and man["training"]["init_from"]["frozen_fingerprint"]
    assert man["fingerprint_id"] == first.fingerprint == Encoder.load(tmp_path / "w.pt").fingerprint
    stamp = (run / "phase1.pt").stat().st_mtime_ns
    again = train("w2.pt")
    assert (run / "phase1.pt").stat().st_mtime_ns == stamp
    assert again["training"]["init_from"]["sha256"] == first.manifest["sha256"]


def test_first_phase_stages_are_chained_and_a_stale_stage_is_refused(tmp_path, rng, monkeypatch):
    """A first phase of several stages trains each from the one before, into phase1.pt,
    phase1b.pt, ...; a finished stage is reused, but not one trained from other weights."""
    one = PHASE1["tiny"][0]
    monkeypatch.setitem(PHASE1, "tiny", (dataclasses.replace(one, shift=True, temperature=0.1),
                                         dataclasses.replace(one, lr=3e-4)))
    run, train = _tiny_two_phase(tmp_path, rng)
    man = train("w.pt")
    first, second = Encoder.load(run / "phase1.pt"), Encoder.load(run / "phase1b.pt")
    assert first.manifest["training"]["train_config"]["shift"] is True
    assert second.manifest["training"]["train_config"]["shift"] is False
    assert second.manifest["training"]["train_config"]["lr"] == 3e-4
    assert second.manifest["training"]["init_from"]["sha256"] == first.manifest["sha256"]
    assert second.fingerprint != first.fingerprint
    assert man["training"]["init_from"]["sha256"] == second.manifest["sha256"]
    assert man["fingerprint_id"] == second.fingerprint
    stamps = [(run / f).stat().st_mtime_ns for f in ("phase1.pt", "phase1b.pt")]
    again = train("w2.pt")
    assert [(run / f).stat().st_mtime_ns for f in ("phase1.pt", "phase1b.pt")] == stamps
    assert again["training"]["init_from"]["sha256"] == second.manifest["sha256"]
    # a later stage trained from other weights than the stage before it is not built on
    mpath = run / "phase1b.manifest.json"
    stale = json.loads(mpath.read_text())
    stale["training"]["init_from"]["sha256"] = "0" * 64
    mpath.write_text(json.dumps(stale))
    with pytest.raises(ConfigError, match="other weights than phase1.pt"):
        train("w3.pt")
    assert not (tmp_path / "w3.pt").exists()


def test_freezing_needs_initial_weights_that_fit(tiny_weights, tmp_path):
    from melodyguard.errors import ConfigError
    from melodyguard.model.training_job import run_training

    with pytest.raises(ConfigError, match="init-from"):
        run_training(preset="tiny-detail", run_dir=tmp_path / "r", out=tmp_path / "o.pt", freeze_fingerprint=True)
    with pytest.raises(ConfigError, match="fingerprint path"):
        # "small" has another width: nothing of the fingerprint path fits
        run_training(preset="small", midi_dir=tmp_path, run_dir=tmp_path / "r", out=tmp_path / "o.pt",
                     init_from=tiny_weights, freeze_fingerprint=True)


def test_catalogue_named_by_the_weights_checksum_is_renamed_on_open(tiny_weights, tmp_path, rng):
    import sqlite3

    from melodyguard.index.store import Catalogue

    enc = Encoder.load(tiny_weights)
    mel = Melody.from_notes(*random_melody(rng, 30))
    with Catalogue(tmp_path / "c", encoder=enc) as cat:
        cat.add_melody(mel, sha256="1" * 64, title="old")
    db = tmp_path / "c" / "catalogue.sqlite"
    with sqlite3.connect(db) as con:  # as written by the previous release
        con.execute("UPDATE meta SET value=? WHERE name='encoder'", (enc.manifest["sha256"][:16],))
    with Catalogue(tmp_path / "c", encoder=enc) as cat:
        assert [w.title for w in cat.works()] == ["old"] and cat.index()[0].ntotal > 0
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE name='encoder'").fetchone()[0] == enc.fingerprint
    with sqlite3.connect(db) as con:  # any other name is still refused
        con.execute("UPDATE meta SET value='0123456789abcdef' WHERE name='encoder'")
    with pytest.raises(IndexVersionError, match="encoder"):
        Catalogue(tmp_path / "c", encoder=enc)


def _log_prob(model, z, p, r):
    """Log-probability of whole windows under the decoder, padding excluded as in decoding."""
    from melodyguard.fingerprint.windows import PITCH_PAD, RHYTHM_PAD

    lp, lr = model.decode(z, p, r)
    lp[..., PITCH_PAD] = -torch.inf
    lr[..., RHYTHM_PAD] = -torch.inf
    lp, lr = torch.log_softmax(lp, -1), torch.log_softmax(lr, -1)
    return (lp.gather(2, p.unsqueeze(2)) + lr.gather(2, r.unsqueeze(2))).squeeze(2).sum(1)


@pytest.mark.parametrize("parallel", [False, True])
def test_beam_search_finds_the_most_probable_window(rng, parallel):
    """An exhaustive search over two-note windows agrees with the beam search; for the
    parallel decoder, whose notes are independent given z, greedy decoding already does."""
    from melodyguard.fingerprint.windows import (
        N_PITCH_TOKENS,
        N_RHYTHM_TOKENS,
        PITCH_PAD,
        RHYTHM_PAD,
    )
    from melodyguard.model.vae import MelodyVAE

    torch.manual_seed(int(rng.integers(1 << 30)))
    model = MelodyVAE(dataclasses.replace(preset("tiny"), window_length=2, parallel_decoder=parallel)).eval()
    z = torch.randn(3, model.config.latent_dim) * 2
    with torch.no_grad():
        gp, gr = model.sample_tokens(z, temperature=0.0)
        b1p, b1r = model.beam_tokens(z, beam=1)
        # Two steps: a beam as wide as the joint vocabulary is an exhaustive search.
        bp, br = model.beam_tokens(z, beam=N_PITCH_TOKENS * N_RHYTHM_TOKENS)
        first = torch.cartesian_prod(torch.arange(N_PITCH_TOKENS), torch.arange(N_RHYTHM_TOKENS))
        first = first[(first[:, 0] != PITCH_PAD) & (first[:, 1] != RHYTHM_PAD)]
        second = first
        for i in range(z.shape[0]):
            P = torch.stack([first[:, 0].repeat_interleave(len(second)), second[:, 0].repeat(len(first))], 1)
            R = torch.stack([first[:, 1].repeat_interleave(len(second)), second[:, 1].repeat(len(first))], 1)
            scores = _log_prob(model, z[i:i + 1].expand(len(P), -1), P, R)
            best = int(scores.argmax())
            assert torch.equal(bp[i], P[best]) and torch.equal(br[i], R[best])
            if parallel:
                assert torch.equal(gp[i], P[best]) and torch.equal(gr[i], R[best])
    assert torch.equal(b1p, gp) and torch.equal(b1r, gr)  # width 1 is greedy decoding


def test_parallel_decoder_reads_only_z(rng):
    """The parallel decoder's logits do not depend on the target tokens (nothing leaks past
    the latent), and sampling draws every note of the window at once, seeded."""
    from melodyguard.model.vae import MelodyVAE

    torch.manual_seed(int(rng.integers(1 << 30)))
    model = MelodyVAE(dataclasses.replace(preset("tiny"), parallel_decoder=True)).eval()
    assert not hasattr(model, "dec_pitch")  # no token inputs to the decoder
    L = model.config.window_length
    z = torch.randn(4, model.config.latent_dim)
    p1, r1 = torch.from_numpy(rng.integers(0, 49, (4, L))), torch.from_numpy(rng.integers(0, 13, (4, L)))
    p2, r2 = torch.from_numpy(rng.integers(0, 49, (4, L))), torch.from_numpy(rng.integers(0, 13, (4, L)))
    with torch.no_grad():
        a, b = model.decode(z, p1, r1), model.decode(z, p2, r2)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (4, L, 50)
        s1 = model.sample_tokens(z, temperature=1.0, generator=torch.Generator().manual_seed(5))
        s2 = model.sample_tokens(z, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s1[0], s2[0]) and s1[0].shape == (4, L)
    assert int(s1[0].max()) < 49 and int(s1[1].max()) < 13  # padding is never emitted


def test_reconstruction_by_beam_search(tiny_weights, rng):
    enc = Encoder.load(tiny_weights)
    w = enc.embed(Melody.from_notes(*random_melody(rng, 24))).windows
    p1, r1 = enc.reconstruct(w.pitch, w.rhythm)
    g = enc.decode(enc.model.encode(torch.from_numpy(w.pitch), torch.from_numpy(w.rhythm))[0].detach().numpy())
    np.testing.assert_array_equal(p1, g[0])
    p4, r4 = enc.reconstruct(w.pitch, w.rhythm, beam=4)
    assert p4.shape == w.pitch.shape and r4.shape == w.rhythm.shape
    np.testing.assert_array_equal(p4, enc.reconstruct(w.pitch, w.rhythm, beam=4)[0])
    with pytest.raises(ConfigError, match="beam must be"):
        enc.reconstruct(w.pitch, w.rhythm, beam=0)


def test_fitted_prior_matches_the_posterior_means(rng):
    """fit_prior keeps the mean and a Cholesky factor of the covariance of the windows'
    posterior means; standard-normal draws map through it, and zero maps to the mean."""
    from melodyguard.model.vae import MelodyVAE

    torch.manual_seed(int(rng.integers(1 << 30)))
    cfg = preset("tiny-detail")
    model = MelodyVAE(cfg).eval()
    eps = torch.randn(3, cfg.latent_dim)
    assert torch.equal(model.prior_latents(eps), eps)  # N(0, I) until fitted
    L = cfg.window_length
    p = torch.from_numpy(rng.integers(0, 49, (500, L)))
    r = torch.from_numpy(rng.integers(0, 13, (500, L)))
    model.fit_prior(p, r, batch_size=128)
    with torch.no_grad():
        mu = model.encode(p, r)[0].double()
    np.testing.assert_allclose(model.prior_latents(torch.zeros(1, cfg.latent_dim))[0].numpy(),
                               mu.mean(0).numpy(), atol=1e-5)
    scale = model.prior_scale.double()
    assert torch.equal(scale, torch.tril(scale))
    np.testing.assert_allclose((scale @ scale.T).numpy(), torch.cov(mu.T).numpy(), atol=2e-4)
    with pytest.raises(ValueError, match="fitted_prior"):
        MelodyVAE(preset("tiny")).fit_prior(p, r)


def test_fitted_prior_is_trained_saved_and_used_by_generation(tmp_path, rng):
    """A preset with a fitted prior fits it at the end of training; it is saved with the
    weights, and generation draws its latents through it."""
    from melodyguard.model.encoder import save_weights
    from melodyguard.model.generate import sample_melodies

    mels = [Melody.from_notes(*random_melody(rng, 30)) for _ in range(6)]
    cfg = preset("tiny-detail")
    model, _ = train_vae(mels, model_config=cfg, train_config=TrainConfig(steps=2, batch_size=8, threads=1),
                         run_dir=tmp_path / "run", progress=False)
    assert not torch.equal(model.prior_scale, torch.eye(cfg.latent_dim))
    save_weights(model, tmp_path / "w.pt")
    enc = Encoder.load(tmp_path / "w.pt")
    assert torch.equal(enc.model.prior_mean, model.prior_mean)
    assert torch.equal(enc.model.prior_scale, model.prior_scale)
    eps = rng.standard_normal((2, cfg.latent_dim)).astype(np.float32)
    np.testing.assert_allclose(enc.prior_latents(eps), model.prior_mean.numpy() + eps @ model.prior_scale.numpy().T,
                               rtol=1e-5, atol=1e-5)
    a = sample_melodies(enc, 2, bars=2, seed=4)
    enc.model.prior_mean += 30.0  # generation reads the fitted prior: moving it changes the melodies
    b = sample_melodies(enc, 2, bars=2, seed=4)
    assert any(not np.array_equal(x.pitches, y.pitches) or not np.array_equal(x.durations_beats, y.durations_beats)
               for x, y in zip(a, b))
