"""The public API is deliberate: __all__ lists exactly the names we mean to export."""

from __future__ import annotations

import melodyguard
from melodyguard import errors

EXPECTED = {
    "__version__", "Melody", "TimeSignature", "WindowConfig", "Windows", "extract_melody", "midi_candidates",
    "window_melody", "augment", "Encoder", "Embedding", "load_encoder", "sample_melodies", "interpolate",
    "melody_to_midi", "Catalogue", "Work", "DetectConfig", "DEFAULT_DETECT", "REPORT_SCHEMA", "check_file",
    "check_melody", *errors.__all__,
}


def test_all_is_exactly_the_public_api():
    assert set(melodyguard.__all__) == EXPECTED
    assert len(melodyguard.__all__) == len(set(melodyguard.__all__))
    for name in melodyguard.__all__:
        assert hasattr(melodyguard, name), name


def test_one_exception_tree():
    for name in errors.__all__:
        exc = getattr(errors, name)
        assert issubclass(exc, errors.MelodyGuardError)
    assert issubclass(errors.MelodyTooShortError, errors.InvalidInputError)
    assert issubclass(errors.IndexVersionError, errors.ArtifactError)
    assert str(errors.WorkNotFoundError("no work with id 3")) == "no work with id 3"


def test_cli_help_lists_the_lifecycle(capsys):
    import pytest

    from melodyguard import cli

    with pytest.raises(SystemExit) as ex:
        cli.main(["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("melody", "add", "remove", "reembed", "list", "check", "audit", "serve", "generate", "train", "demo"):
        assert cmd in out
