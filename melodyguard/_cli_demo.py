"""``melodyguard demo``: the main job end to end on the embedded defaults."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import EXIT_OK, command

EXAMPLES = Path(__file__).with_name("examples")


def _setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo"), help="folder for the demo catalogue and report")
    p.add_argument("--works", type=int, default=400, help="O'Neill tunes in the demo catalogue")
    p.add_argument("--quiet", action="store_true")


def _cmd_demo(a: argparse.Namespace) -> int:
    from ._cli_catalogue import describe, refresh_law
    from .corpus import build_corpus, load_corpus
    from .detect import check_file
    from .evidence import write_html_report
    from .fingerprint import extract_melody
    from .index import Catalogue
    from .model.encoder import load_encoder

    example = EXAMPLES / "copied_phrase.mid"
    expected = json.loads((EXAMPLES / "copied_phrase.json").read_text())
    mel = extract_melody(example)
    print(f"1. The bundled example {example.name}: {len(mel)} melody notes from track "
          f"{mel.info['track']} '{mel.info['track_name']}' (of {len(mel.info['candidates'])} candidates; drums ignored).")
    print(f"2. Exporting {a.works} tunes of O'Neill's Music of Ireland (1850) from music21 (cached after the first run)...")
    build_corpus(collections=["oneills1850"], limit=a.works, progress=not a.quiet)
    tunes = load_corpus(collections=["oneills1850"])
    tunes = sorted(tunes, key=lambda t: (t.key != expected["source_key"], t.key))[: a.works]
    # The demo's catalogue is the demo's own: after an upgrade changed the fingerprint, embed it
    # again rather than refuse (a user's catalogue is refused until `melodyguard reembed`).
    cat = Catalogue(a.out / "catalogue", encoder=load_encoder(), reembed=True)
    if cat.reembedded:
        print(f"   (the demo catalogue was built with other weights: {cat.reembedded['works']} works embedded again)")
    cat.add_melodies([{"melody": t.melody, "sha256": "corpus:" + t.key, "title": t.title, "external_id": t.key,
                       "owner": "O'Neill's Music of Ireland (1850)"} for t in tunes], skip_duplicates=True)
    cat.index()
    print(f"3. Demo catalogue: {cat.count()} works in {a.out / 'catalogue'}")
    law = refresh_law(cat, quiet=a.quiet)
    if law["source"] == "shipped":
        print("   Chance law: the shipped one.")
    else:
        print(f"   Chance law of this catalogue, from {law['decoys']} of its works played backwards: E-values x"
              f"{law['factor']:.3g}" + (" (the shipped law holds here)" if law["factor"] == 1.0 else ""))
    rep = check_file(example, cat)
    print("4. Check:")
    print(describe(rep))
    html_path = write_html_report(rep, cat, a.out / "report.html", query_melody=mel)
    (a.out / "report.json").write_text(json.dumps(rep, indent=2, default=float))
    print(f"5. Evidence: {html_path} (HTML with piano rolls), {a.out / 'report.json'} (JSON)")
    print(f"   Expected: bars {expected['query_bars'][0]}-{expected['query_bars'][1]} copy bars "
          f"{expected['reference_bars'][0]}-{expected['reference_bars'][1]} of '{expected['source_title']}', "
          f"transposed {expected['transposition_semitones']:+d}.")
    return EXIT_OK


_cmd_demo.setup = _setup_demo  # type: ignore[attr-defined]
command("demo", "build a small demo catalogue and check the bundled example (README command 1)")(_cmd_demo)
