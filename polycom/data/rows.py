"""Reading local json/jsonl and txt files row by row, telling good rows from bad ones.

One reader serves both the startup pre-scan (``validate_data_config`` with ``data.bad_rows=error``) and
the training stream (``polycom.data.sources``), so the two can never disagree about what a bad row is.
It yields the rows the ``datasets`` ``json``/``text`` builders would give for a clean file, in the same
order, and a :class:`BadRow` (file, line, what is wrong) where a row is malformed:

- json/jsonl: one JSON object per line (blank lines are not rows, as in the ``json`` builder); a line
  that is not valid UTF-8, not valid JSON, not an object, lacks ``data.text_field`` or holds a non-string
  there is bad. A file starting with ``[`` is one JSON array of objects (or of strings, which become
  ``text``), as the ``json`` builder reads it; items are located as ``item <i>``.
- txt: one row per line / paragraph / file (``data.sample_by``), split exactly as the ``text`` builder
  does (universal newlines; paragraphs are separated by a blank line and empty ones dropped). A row with
  bytes that are not valid UTF-8 is bad as a whole: with ``data.bad_rows=skip`` it is skipped, not repaired
  with U+FFFD, because such bytes usually mean a whole file in another encoding (Latin-1, cp1252), which
  should be re-encoded rather than trained on with replacement characters.

Only the standard library is used, so the pre-scan costs no ``datasets`` start-up.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Union

BOM = b"\xef\xbb\xbf"
TEXT_CHUNK_CHARS = 10 << 20  # as the datasets text builder: paragraphs are split chunk by chunk
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of an undecodable byte
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


@dataclass(frozen=True)
class BadRow:
    """A malformed row: ``message`` names the file and the line (or array item) and what is wrong."""

    path: str
    where: str  # "line 17" or "item 3"
    message: str

    def __str__(self) -> str:
        return self.message


Row = Union[str, BadRow]


def read_rows(path: str, builder: str, field: str, sample_by: str = "document") -> Iterator[Row]:
    """The rows of one local file: each a document (``str``) or a :class:`BadRow`."""
    if builder == "json":
        return _json_rows(path, field)
    if builder == "text":
        return _text_rows(path, sample_by)
    raise ValueError(f"read_rows reads json and text files, not {builder!r} ({path})")


def open_binary(path: str) -> BinaryIO:
    """Open a file for reading bytes, decompressing .gz/.bz2/.xz (and .zst with ``zstandard``)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as err:
            raise ValueError(f"{path}: reading .zst files needs the zstandard package (pip install zstandard)") \
                from err
        return zstandard.open(path, "rb")
    return open(path, "rb")


# ------------------------------------------------------------------------------------------------ json

def _json_rows(path: str, field: str) -> Iterator[Row]:
    with open_binary(path) as f:
        first = f.readline()
        if first.startswith(BOM):
            first = first[len(BOM):]
        if first.startswith(b"["):  # one JSON array, read whole (as the json builder does)
            yield from _json_array_rows(path, field, first + f.read())
            return
        number, raw = 1, first
        while raw:
            if raw.strip():  # blank lines are not rows
                yield _json_line(path, number, raw, field)
            raw = f.readline()
            number += 1


def _json_line(path: str, number: int, raw: bytes, field: str) -> Row:
    where = f"line {number}"
    raw = raw.rstrip(b"\r\n")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRow(path, where, f"{path} {where} is not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                                   f"{err.start + 1})")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return BadRow(path, where, f"{path} {where} is not valid JSON ({_json_error(err)})")
    return _record_text(path, where, record, field)


def _json_array_rows(path: str, field: str, data: bytes) -> Iterator[Row]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        where = "line %d" % (data.count(b"\n", 0, err.start) + 1)
        yield BadRow(path, where, f"{path} {where} is not valid UTF-8 (byte 0x{data[err.start]:02x}); the file "
                                  "is one JSON array, so all of it is unreadable")
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}"
        yield BadRow(path, where, f"{path} {where} is not valid JSON ({_json_error(err)}); the file "
                                  "is one JSON array, so all of it is unreadable")
        return
    for i, item in enumerate(items):
        # a list of strings is read as a "text" column, as by the json builder
        record = {"text": item} if isinstance(item, str) else item
        yield _record_text(path, f"item {i}", record, field)


def _json_error(err: json.JSONDecodeError) -> str:
    """E.g. "Expecting ',' delimiter at column 12", "Unterminated string starting at column 3"."""
    return f"{err.msg}{'' if err.msg.endswith(' at') else ' at'} column {err.colno}"


def _record_text(path: str, where: str, record, field: str) -> Row:
    if not isinstance(record, dict):
        return BadRow(path, where, f"{path} {where} is not a JSON object but {_json_type(record)}")
    if field not in record:
        fields = ", ".join(map(str, record)) or "none"
        return BadRow(path, where, f"data.text_field={field!r} not found in {path} {where} (fields: {fields})")
    value = record[field]
    if not isinstance(value, str):
        return BadRow(path, where, f"data.text_field={field!r} in {path} {where} is {type(value).__name__}, "
                                   f"not str: {value!r:.60}")
    return value


def _json_type(value) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def splittable_by_bytes(path: str) -> bool:
    """Whether a json file can be read in byte ranges (:func:`json_line_range`): JSON Lines, not compressed, not
    one JSON array."""
    if path.endswith(_COMPRESSED):
        return False
    with open(path, "rb") as f:
        return not f.read(len(BOM) + 1).removeprefix(BOM).startswith(b"[")


def json_line_range(path: str, field: str, piece: int, pieces: int) -> Iterator[Row]:
    """The rows of the ``piece``-th of ``pieces`` equal byte ranges of a JSON Lines file: the lines whose first byte
    lies in the range. The pieces together give the rows of :func:`read_rows`, in order, each once; a process reads
    only its range (the ranks of a run with fewer files than processes)."""
    size = os.path.getsize(path)
    start, end = size * piece // pieces, size * (piece + 1) // pieces
    with open(path, "rb") as f:
        if start:
            f.seek(start - 1)
            f.readline()  # the line holding byte start - 1 belongs to an earlier piece
        position = f.tell()
        while position < end:
            raw = f.readline()
            if not raw:
                break
            line = raw[len(BOM):] if position == 0 and raw.startswith(BOM) else raw
            if line.strip():
                row = _json_line(path, 0, line, field)
                # the line number only for a bad row: count the lines before it then (rare)
                yield _json_line(path, _line_number(path, position), line, field) if isinstance(row, BadRow) else row
            position += len(raw)


def _line_number(path: str, position: int) -> int:
    with open(path, "rb") as f:
        return f.read(position).count(b"\n") + 1


# ------------------------------------------------------------------------------------------------ text

def _text_rows(path: str, sample_by: str) -> Iterator[Row]:
    # universal newlines, like the text builder's open(); undecodable bytes become U+DC80..U+DCFF
    with io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="surrogateescape", newline=None) as f:
        if sample_by == "line":
            for number, line in enumerate(f, 1):
                yield _text_unit(path, number, line[:-1] if line.endswith("\n") else line)
        elif sample_by == "paragraph":
            carry, carry_line = "", 1
            while True:
                chunk = f.read(TEXT_CHUNK_CHARS)
                if not chunk:
                    break
                pieces = (carry + chunk + f.readline()).split("\n\n")
                line = carry_line
                for piece in pieces[:-1]:
                    if piece:
                        yield _text_unit(path, line, piece)
                    line += piece.count("\n") + 2
                carry, carry_line = pieces[-1], line
            if carry:
                yield _text_unit(path, carry_line, carry)
        elif sample_by == "document":
            yield _text_unit(path, 1, f.read())
        else:
            raise ValueError(f"data.sample_by={sample_by!r} is not one of document, paragraph, line")


def _text_unit(path: str, first_line: int, text: str) -> Row:
    escaped = _ESCAPED_BYTE.search(text)
    if escaped is None:
        return text
    where = "line %d" % (first_line + text.count("\n", 0, escaped.start()))
    byte = ord(escaped.group()) - 0xDC00
    return BadRow(path, where, f"{path} {where} is not valid UTF-8 (byte 0x{byte:02x})")
