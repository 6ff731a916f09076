"""The report's schema, ``melodyguard.report/1``, as pydantic models.

One report per checked file (``check --json`` prints one per line; ``POST /v1/checks``
returns one). The models are the documentation: :func:`report_json_schema` gives the JSON
Schema (``melodyguard schema`` prints it; ``docs/report.schema.json`` is a copy), and
:func:`validate_report` checks a report against it. Fields are never removed or renamed within
``melodyguard.report/1``; a change that would do so gets a new schema name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Report", "Match", "report_json_schema", "validate_report"]

Verdict = Literal["clear", "review", "block"]
Pair = tuple[float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrackChecked(_Strict):
    track: int
    track_name: str
    n_notes: int
    best_evalue: float | None = Field(description="best E-value of this line, after the correction for the lines checked")


class Query(_Strict):
    n_notes: int = Field(description="notes of the melody compared")
    exact_copy_evalue: float | None = Field(
        None, description="the E-value an unedited copy of the whole query would get in this catalogue (every "
                          "note matched, at the query's own note weights; for several lines the best line's, "
                          "corrected as its matches are): above review_evalue, the query is too short or too "
                          "plain to be flagged here, so 'clear' means 'cannot tell', not 'no copy'")
    duration_seconds: float
    duration_beats: float
    path: str | None = Field(None, description="the file name as given (API: the upload's name)")
    sha256: str | None = Field(None, description="of the file's bytes")
    source: Literal["midi", "audio"] | None = None
    has_beats: bool | None = Field(None, description="false for audio without a beat grid: bars are then estimates")
    track: int | None = Field(None, description="MIDI: the instrument the melody was taken from")
    track_name: str | None = None
    tracks_checked: list[TrackChecked] | None = Field(None, description="--tracks all: every line checked")
    tracker: str | None = Field(None, description="audio: the pitch tracker")
    tempo_bpm: float | None = None
    voiced_fraction: float | None = None
    extract_seconds: float | None = None


class Span(_Strict):
    start_note: int = Field(description="0-based index of the first note of the passage")
    end_note: int = Field(description="0-based index of its last note (inclusive)")
    bars: tuple[int, int] = Field(description="first and last bar, 1-based")
    beats: Pair = Field(description="start and end in quarter-note beats")
    seconds: Pair = Field(description="start and end in seconds")


class Segment(_Strict):
    query: Span
    reference: Span
    matched_notes: int = Field(description="aligned notes of equal pitch after the transposition")
    aligned_notes: int
    alignment_score: float
    pairs: list[tuple[int, int]] | None = Field(
        None, description="(query note, reference note) of every aligned pair; absent for others' private works")


class Work(_Strict):
    id: int | None = Field(description="null for another owner's private work")
    external_id: str | None
    title: str
    owner: str | None
    private: bool


class Score(_Strict):
    evalue: float = Field(description="matches at least this strong expected by chance in this catalogue")
    p_chance: float = Field(description="1 - exp(-evalue)")
    alignment_score: float
    total_alignment_score: float
    lines_checked: int | None = Field(None, description="every line of a MIDI file checked: how many lines")
    evalue_factor: float | None = Field(
        None, description="every line checked: the line's E-values were multiplied by this (weighted Bonferroni: "
                          "2 for the melody line, 2(k-1) for the other k-1 lines; 1 for a file of one line)")


class Coverage(_Strict):
    query: float = Field(description="share of the query's notes inside matched passages")
    reference: float


class Stock(_Strict):
    similar_works: int = Field(description="other works matching the same passage about as well")
    is_stock: bool


class TrackRef(_Strict):
    index: int
    name: str


class OtherMode(_Strict):
    reference_key: str = Field(description="the reference's key as estimated (Krumhansl-Kessler), e.g. 'C major'")
    matched_in: str = Field(description="the mode the copy's notes match: the reference's other mode, e.g. 'C minor'")


class Match(_Strict):
    work: Work
    score: Score
    transposition_semitones: int = Field(description="query minus reference")
    tempo_ratio: float = Field(description="reference / query seconds per note (> 1: the query is faster)")
    beat_ratio: float
    segments: list[Segment]
    coverage: Coverage
    stock: Stock
    matched_as: Literal["notes", "repeats_joined"]
    other_mode: OtherMode | None = Field(
        None, description="present when the copy changed the mode: the reference was matched in its other mode "
                          "(major <-> minor; matched_notes count equal pitches in that mode)")
    verdict: Verdict
    track: TrackRef | None = Field(None, description="--tracks all: the line of the query this match is in")


class Thresholds(_Strict):
    review_evalue: float
    block_evalue: float


class Law(_Strict):
    source: Literal["shipped", "catalogue decoys"] = Field(
        description="the shipped chance law, or the catalogue's own, fitted on its works played backwards "
                    "(`melodyguard calibrate`)")
    factor: float = Field(description="every E-value of this catalogue is multiplied by this (>= 1)")
    fitted_works: int | None = Field(None, description="works in the catalogue when its law was fitted")
    decoys: int | None = Field(None, description="decoys the law was fitted on")
    target: float | None = Field(None, description="share of decoys the review threshold may flag")
    fitted_at: str | None = None


class CatalogueInfo(_Strict):
    works: int
    notes: int
    encoder: str = Field(description="fingerprint id of the weights the catalogue was built with")
    index: str
    calibrated: bool
    law: Law | None = Field(None, description="the chance law the E-values are under (absent in reports "
                                              "made before catalogue laws existed)")


class Report(_Strict):
    schema_: Literal["melodyguard.report/1"] = Field(alias="schema")
    query: Query
    verdict: Verdict
    thresholds: Thresholds
    catalogue: CatalogueInfo
    matches: list[Match] = Field(description="best first; at most max_matches (5 by default). Every flagged passage of the query is shown with its best source, before the runners-up of another passage")
    timing_ms: dict[str, float]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema of a report."""
    schema = Report.model_json_schema(by_alias=True)
    schema["$id"] = "melodyguard.report/1"
    return schema


def validate_report(report: dict[str, Any]) -> Report:
    """Parse ``report`` against the schema; raises pydantic's ``ValidationError`` on a mismatch."""
    return Report.model_validate(report)
