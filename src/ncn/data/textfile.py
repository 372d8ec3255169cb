"""The TinyStories text format: stories separated by a line `<|endoftext|>`.

Reading is streamed line by line in binary mode, so a 2 GB file never sits in memory, invalid
UTF-8 is reported with its byte offset, and lines split on b"\\n" only (str.splitlines would also
split on \\x0b, \\x1c, U+2028, ... which occur in web text).

A *story* is the text between two separator lines, exactly as stored: its lines with their
newlines, the separator line itself excluded. Whitespace-only segments (a blank line after the
last separator, two separators in a row) are not stories and are dropped. A file without any
separator line is one *stream* (e.g. our validation excerpt exported without boundaries).
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, Iterable, Iterator

from ncn.errors import NCNError

EOT = "<|endoftext|>"
SEPARATOR_LINE = EOT + "\n"


def is_separator(line: str) -> bool:
    return line.strip() == EOT


def iter_lines(path: str | os.PathLike, hasher=None) -> Iterator[tuple[str, int]]:
    """(line, its size in bytes) for every line, newline included; strict UTF-8.
    `hasher` (a hashlib object), when given, is fed every raw line."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            if hasher is not None:
                hasher.update(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise NCNError(
                    f"{path}: invalid UTF-8 at byte offset {offset + e.start} ({e.reason}); "
                    "the data must be UTF-8 text"
                ) from None
            offset += len(raw)
            yield line, len(raw)


def check_nonempty(path: str | os.PathLike) -> None:
    if os.path.getsize(path) == 0:
        raise NCNError(f"{path} is empty")


def iter_pieces(
    path: str | os.PathLike, chunk_bytes: int = 1 << 12, require_separator: bool = False
) -> Iterator[tuple[str, int, bool]]:
    """(text, n_bytes, ends_story) pieces covering every story of the file in order.

    A story normally is one piece. A story (or a separator-less stream) longer than
    `chunk_bytes` is cut into several pieces, only where encoding the pieces one by one gives
    exactly the ids of encoding the whole story (for byte-level BPE; see below): memory stays
    bounded and a long stream is encoded in parallel by encode_batch.
    """
    lines: list[str] = []
    nbytes = 0
    seen_separator = False
    story_open = False  # a piece of the current story was already yielded
    for line, n in iter_lines(path):
        if is_separator(line):
            seen_separator = True
            if story_open or not _blank(lines):
                yield "".join(lines), nbytes, True
            lines, nbytes, story_open = [], 0, False
            continue
        if nbytes >= chunk_bytes and line[:1] and not line[0].isspace() and not _blank(lines):
            # Cut just before the newline that ends the previous line (it opens the next piece):
            # GPT-2's pre-tokenizer regex ends a pre-token there whether or not the text goes
            # on. Cutting after it would not do: a whitespace run such as " \n" or "\n\n" is
            # grouped differently at the end of a string than before a word.
            text = "".join(lines)
            yield text[:-1], nbytes - 1, False
            lines, nbytes, story_open = ["\n"], 1, True
        lines.append(line)
        nbytes += n
    if require_separator and not seen_separator:
        raise NCNError(no_separator_message(path))
    if story_open or not _blank(lines):
        yield "".join(lines), nbytes, True


def no_separator_message(where) -> str:
    return (
        f"{where} has no line {EOT}: a train file must separate its stories with a line {EOT} "
        "(the TinyStories text format), or be .jsonl/.parquet with one story per 'text' field"
    )


def _blank(lines: list[str]) -> bool:
    return all(not line.strip() for line in lines)


def stories_from_lines(lines: Iterable[str], where, require_separator: bool = False) -> Iterator[str]:
    """Group lines (newlines kept) into stories; see the module docstring."""
    buf: list[str] = []
    seen_separator = False
    for line in lines:
        if is_separator(line):
            seen_separator = True
            if not _blank(buf):
                yield "".join(buf)
            buf = []
        else:
            buf.append(line)
    if require_separator and not seen_separator:
        raise NCNError(no_separator_message(where))
    if not _blank(buf):
        yield "".join(buf)


def iter_stories(path: str | os.PathLike, require_separator: bool = False) -> Iterator[str]:
    """Every story of a file (a separator-less file is one story: the whole stream)."""
    return stories_from_lines((line for line, _ in iter_lines(path)), path, require_separator)


def scan(path: str | os.PathLike) -> dict:
    """Validate a text file and count it: bytes, sha256, stories (None without separators).

    Raises NCNError for an empty file, invalid UTF-8 or a file that holds no text.
    """
    check_nonempty(path)
    h = hashlib.sha256()
    total = n_sep = n_stories = 0
    text_seen = False  # non-blank text since the last separator
    for line, n in iter_lines(path, hasher=h):
        total += n
        if is_separator(line):
            n_sep += 1
            n_stories += text_seen
            text_seen = False
        elif line.strip():
            text_seen = True
    n_stories += text_seen
    if n_stories == 0:
        raise NCNError(f"{path} holds no text (only blank lines and {EOT} separators)")
    return {"bytes": total, "sha256": h.hexdigest(), "stories": n_stories if n_sep else None}


def normalize_story(text: str) -> str:
    """A story from a .jsonl/.parquet/hub record, ready for the text format: ends with a newline."""
    return text if text.endswith("\n") else text + "\n"


class StoryWriter:
    """Write stories in the text format (each followed by a separator line), hashing as it goes."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.h = hashlib.sha256()
        self.bytes = 0
        self.stories = 0

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.h.update(data)
        self.bytes += len(data)

    def write(self, story: str) -> None:
        self._write(story.encode("utf-8"))
        self._write(SEPARATOR_LINE.encode("utf-8"))
        self.stories += 1

    def stats(self) -> dict:
        return {"bytes": self.bytes, "sha256": self.h.hexdigest(), "stories": self.stories}


def story_file_bytes(story: str) -> int:
    """Bytes a story takes in the text format, separator line included (for the size cap)."""
    return len(story.encode("utf-8")) + len(SEPARATOR_LINE)
