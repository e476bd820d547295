"""A persistent outbox: publishes written to a file before they are sent.

The file is a journal of JSON lines. ``{"add": KEY, "frame": {...}, "at": UNIX_TIME}`` is
appended, flushed and fsync'ed before a publish is sent; ``{"done": KEY}`` is appended once
the broker confirmed it. On opening, every ``add`` without its ``done`` is pending again, in
the order it was made, and goes out first, with the ``msg_id`` it had. When nothing is pending
the file is emptied; when it holds many more finished entries than pending ones it is rewritten
(a new file renamed over it). A lock file next to it (``PATH.lock``, ``flock``) keeps two
processes from sending the same entries.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Tuple

from ._errors import WharfError

try:  # POSIX only; elsewhere the outbox is not locked against a second process.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["Outbox"]

# Rewrite the file once it holds this many lines and four times as many as are pending.
_REWRITE_LINES = 1000


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:  # pragma: no cover (a platform without directory fds)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    """The journal at ``path`` (created when missing)."""

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = os.fspath(path)
        self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self._lock_fd)
                raise WharfError(
                    "outbox_locked",
                    f"the outbox {self.path} is in use by another client (another process, "
                    "or a client of this one that was not closed)",
                ) from None
        # key -> (frame, at), in the order the publishes were made.
        self.pending: Dict[str, Tuple[Dict[str, Any], float]] = {}
        self._lines = 0
        try:
            self._load()
            existed = os.path.exists(self.path)
            self._file = open(self.path, "ab")
            if not existed:
                _fsync_dir(self.path)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        # A crash may leave the last line half written: its publish was never sent (the line
        # is made durable before the send), so it is dropped. Damage anywhere else is refused.
        torn = lines.pop() if lines else b""
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if "add" in record:
                    self.pending[str(record["add"])] = (dict(record["frame"]), float(record.get("at", 0)))
                elif "done" in record:
                    self.pending.pop(str(record["done"]), None)
                else:
                    raise ValueError("neither add nor done")
            except (ValueError, KeyError, TypeError) as e:
                raise WharfError(
                    "outbox_damaged", f"{self.path} line {number} is not an outbox record: {e}"
                ) from None
            self._lines += 1
        if torn.strip():
            # Cut it off, so that the next record starts on a line of its own.
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - len(torn))
                f.flush()
                os.fsync(f.fileno())

    def add(self, key: str, frame: Dict[str, Any]) -> None:
        """Records a publish durably (fsync) before it is sent."""
        at = time.time()
        line = json.dumps({"add": key, "frame": frame, "at": at}, allow_nan=False, separators=(",", ":"))
        self._file.write(line.encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.pending[key] = (frame, at)
        self._lines += 1

    def done(self, key: str) -> None:
        """Records a confirmed publish. Not fsync'ed: lost in a crash, the entry is sent again
        with its msg_id and the broker's dedup window stores it once."""
        if self.pending.pop(key, None) is None:
            return
        if not self.pending:
            # Nothing pending: start over with an empty file.
            self._file.truncate(0)
            self._file.flush()
            self._lines = 0
            return
        self._file.write(json.dumps({"done": key}).encode() + b"\n")
        self._file.flush()
        self._lines += 1
        if self._lines >= _REWRITE_LINES and self._lines >= 4 * len(self.pending):
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            for key, (frame, at) in self.pending.items():
                f.write(json.dumps({"add": key, "frame": frame, "at": at}, separators=(",", ":")).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path)
        self._file.close()
        self._file = open(self.path, "ab")
        self._lines = len(self.pending)

    def entries(self) -> List[Tuple[str, Dict[str, Any], float]]:
        return [(key, frame, at) for key, (frame, at) in self.pending.items()]

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        if fcntl is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
