"""melodyguard: find copied melodies, with evidence.

A melody VAE's encoder fingerprints melody windows; a FAISS index over a SQLite catalogue finds
candidates; note-level alignment verifies them and an extreme-value score says how likely the
match is by chance.

Public API::

    from melodyguard import Catalogue, extract_melody, check_file, load_encoder
    cat = Catalogue("my-catalogue")
    cat.add("tune.mid", title="The Kesh", owner="X")
    report = check_file("suspect.mid", cat)
"""

__version__ = "0.1.0"

from .augment import augment
from .detect import DEFAULT_DETECT, REPORT_SCHEMA, DetectConfig, check_file, check_melody
from .errors import (
    ArtifactError,
    CatalogueError,
    ConfigError,
    CorruptFileError,
    DuplicateWorkError,
    EmptyCatalogueError,
    EmptyInputError,
    IndexVersionError,
    InputTooLargeError,
    InvalidInputError,
    LawFitBusyError,
    MelodyGuardError,
    MelodyTooShortError,
    ModelVersionError,
    NoMelodyError,
    UnsupportedFormatError,
    WorkNotFoundError,
)
from .fingerprint import (
    Melody,
    TimeSignature,
    WindowConfig,
    Windows,
    extract_melody,
    midi_candidates,
    window_melody,
)
from .index import Catalogue, Work
from .model.encoder import Embedding, Encoder, load_encoder
from .model.generate import interpolate, melody_to_midi, sample_melodies

__all__ = [
    "__version__",
    # fingerprint
    "Melody",
    "TimeSignature",
    "WindowConfig",
    "Windows",
    "extract_melody",
    "midi_candidates",
    "window_melody",
    "augment",
    # model
    "Encoder",
    "Embedding",
    "load_encoder",
    "sample_melodies",
    "interpolate",
    "melody_to_midi",
    # catalogue and detection
    "Catalogue",
    "Work",
    "DetectConfig",
    "DEFAULT_DETECT",
    "REPORT_SCHEMA",
    "check_file",
    "check_melody",
    # errors
    "MelodyGuardError",
    "InvalidInputError",
    "EmptyInputError",
    "CorruptFileError",
    "UnsupportedFormatError",
    "InputTooLargeError",
    "NoMelodyError",
    "MelodyTooShortError",
    "ArtifactError",
    "ModelVersionError",
    "IndexVersionError",
    "CatalogueError",
    "DuplicateWorkError",
    "WorkNotFoundError",
    "EmptyCatalogueError",
    "LawFitBusyError",
    "ConfigError",
]
