"""The search's append-only journal: what makes a search resumable without pickles.

One JSON record per line (a header, every candidate the optimizer asked for, every fitness
measured), flushed and fsynced as it is written; a line torn by a kill is dropped when the
journal is reopened.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .errors import BusyError, InputError

JOURNAL_FORMAT = "lcsc-search-journal/1"


class Journal:
    """Append-only JSON-lines record of a search. Each record is written with one write, then
    flushed and fsynced. Opened for writing (the search does), a last line torn by a kill (no
    newline, or not JSON) is dropped and cut from the file; a bad line anywhere else is an error,
    never a silent loss. An exclusive lock keeps a second search off the same journal; opened
    read-only (`readonly=True`) it neither locks nor changes the file."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.records: list[dict] = []
        self.dropped = 0
        self._fh = None
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Append mode never truncates: a second search that then fails to get the lock leaves the
                # file exactly as it was.
                self._fh = open(self.path, "ab")
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot write the search journal here: {exc.strerror}", str(exc.filename or self.path)
                ) from exc
            try:
                # Non-blocking: a second search fails at once with BusyError instead of waiting silently.
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._fh.close()
                raise BusyError(
                    f"{self.path}: another search is running on this journal "
                    "(it holds the lock); wait for it or stop it first"
                ) from None
        try:
            self._read(readonly)
        except BaseException:
            # Any failure while reading, an interrupt included, closes the file so the lock is released.
            self.close()
            raise
        if self.records and self.records[0].get("format") != JOURNAL_FORMAT:
            self.close()
            raise InputError(
                f"{self.path}: not an lcsc search journal (first record {self.records[0]!r:.80}); "
                "move it away to start the search afresh"
            )

    def _read(self, readonly: bool) -> None:
        data = self.path.read_bytes() if self.path.exists() else b""
        lines = data.splitlines(keepends=True)
        good = 0
        for number, line in enumerate(lines, start=1):
            try:
                # A line without its newline is torn even if it parses: if it were kept, the next
                # record would be appended onto the same line.
                if not line.endswith(b"\n"):
                    raise ValueError("no newline")
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a record")
                self.records.append(record)
            except ValueError:  # also UnicodeDecodeError
                # Appends only ever tear the last line; a bad line before it means the file was edited, and
                # dropping it (and all after it) would silently lose records.
                if number < len(lines):
                    raise InputError(
                        f"{self.path}: line {number} of {len(lines)} is not a complete JSON record; "
                        "the journal was changed by hand or by another program: move it away "
                        "to start the search afresh"
                    ) from None
                break
            good += len(line)
        self.dropped = len(data) - good
        if self.dropped and not readonly:
            # Cut off, so the next record starts a line of its own (in append mode writes go to the new end).
            self._fh.truncate(good)

    def append(self, record: dict) -> None:
        # The whole line in one write, then fsync: a kill leaves at most a torn last line, and a record
        # that was appended survives a crash of the machine.
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write the search journal: {exc.strerror}", str(self.path)) from exc
        self.records.append(record)

    def start(self) -> None:
        """Write the header record of a new journal."""
        if not self.records:
            self.append({"type": "header", "format": JOURNAL_FORMAT})

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()  # also releases the lock
            except OSError:
                # A record whose write failed (disk full) is still buffered: it is torn, and dropped when the
                # journal is reopened; the failed append already named the file.
                pass
