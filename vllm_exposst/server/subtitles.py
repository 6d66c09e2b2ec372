"""Finished sentences as subtitles: WebVTT and SRT, source, translation or both.

A cue runs on the session's own clock (seconds since the speaker's session was
created) from the arrival of the sentence's first source word to the moment its
translation was done.  Pure formatting: the hub (``listeners.py``) keeps the
sentences, this module only writes them out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

TRACKS = ("translation", "source", "both")
FORMATS = ("vtt", "srt")
MIN_CUE_SECONDS = 0.001  # a cue must end after it starts


@dataclass(frozen=True)
class Cue:
    """One finished sentence: its index in the session, times and texts."""

    sentence: int
    start: float  # first source word arrived (session clock, seconds)
    end: float  # translation done (session clock, seconds)
    source: str
    text: str


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _one_line(text: str) -> str:
    """Cue text on one line: a blank line would end the cue, '-->' would start a timing."""
    return " ".join(text.split()).replace("-->", "->")


def _lines(cue: Cue, track: str) -> list[str]:
    if track == "translation":
        lines = [cue.text]
    elif track == "source":
        lines = [cue.source]
    else:
        lines = [cue.text, cue.source]
    return [line for line in (_one_line(text) for text in lines) if line]


def _timed(cues: Iterable[Cue], track: str) -> list[tuple[Cue, float, float, list[str]]]:
    if track not in TRACKS:
        raise ValueError(f"track must be one of {TRACKS}, got {track!r}")
    out = []
    # sentences may finish out of order; a subtitle file lists cues by start time
    for cue in sorted(cues, key=lambda cue: (cue.start, cue.sentence)):
        lines = _lines(cue, track)
        if lines:  # a sentence with nothing to show on this track has no cue
            out.append((cue, cue.start, max(cue.end, cue.start + MIN_CUE_SECONDS), lines))
    return out


def _escape_vtt(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_webvtt(cues: Iterable[Cue], track: str = "translation") -> str:
    """A WebVTT file; cue identifiers are the sentence indices."""
    parts = ["WEBVTT", ""]
    for cue, start, end, lines in _timed(cues, track):
        parts += [
            str(cue.sentence),
            f"{_clock(start, '.')} --> {_clock(end, '.')}",
            *map(_escape_vtt, lines),
            "",
        ]
    return "\n".join(parts) + "\n"


def to_srt(cues: Iterable[Cue], track: str = "translation") -> str:
    """An SRT file; cues are numbered from 1 in order (SRT wants consecutive numbers)."""
    parts: list[str] = []
    for number, (_cue, start, end, lines) in enumerate(_timed(cues, track), 1):
        parts += [str(number), f"{_clock(start, ',')} --> {_clock(end, ',')}", *lines, ""]
    return "\n".join(parts) + ("\n" if parts else "")


MEDIA_TYPES = {"vtt": "text/vtt; charset=utf-8", "srt": "application/x-subrip; charset=utf-8"}


def render(cues: Iterable[Cue], fmt: str, track: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return to_webvtt(cues, track) if fmt == "vtt" else to_srt(cues, track)
