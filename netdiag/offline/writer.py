"""Writing recordings: files 0600 in directories 0700, appended one flush at a time, rotated into
numbered files under a size and age bound, the oldest removed beyond ``keep``."""
from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path

from netdiag.errors import OutputError
from netdiag.offline import format as fm

MIN_MAX_SIZE = 64 * 1024


def numbered(path: Path, n: int) -> Path:
    """node.ndrec, 3 -> node.000003.ndrec"""
    suffix = path.suffix or fm.SUFFIX
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.{n:06d}{suffix}")


def numbered_files(path: Path) -> list[Path]:
    suffix = path.suffix or fm.SUFFIX
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    pat = re.compile(re.escape(stem) + r"\.(\d{6})" + re.escape(suffix) + "$")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pat.match(p.name))


def make_private_dirs(d: Path) -> None:
    """Create ``d`` and its missing parents, each 0700 (a recording holds addresses and names)."""
    missing = []
    d = Path(d)
    while not d.exists():
        missing.append(d)
        d = d.parent
    for m in reversed(missing):
        try:
            os.mkdir(m, 0o700)
            os.chmod(m, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise OutputError(f"{m}: cannot create directory ({e.strerror})") from None


def check_recording_path(path, what: str = "--out", rotating: bool = False) -> Path:
    """Refuse (OutputError, exit 73) a recording path that cannot be created, before anything
    is attached or written: a directory, an existing file (or numbered files when rotating),
    a parent that is a file or not writable."""
    from netdiag.inputs import check_output_file
    p = check_output_file(path, what)
    if rotating:
        old = numbered_files(p)
        if old:
            raise OutputError(f"{what} {old[0]}: a recording with this name exists (remove it or choose another)")
    return p


class RecordingWriter:
    """Append interval records to ``path`` (or, with ``max_size``/``max_age``, to numbered files
    next to it, at most ``keep`` of them). ``write(records)`` appends one flush; a failure
    (disk full, I/O error) truncates the file back to its last complete flush and raises
    ``OutputError``: what was written stays readable."""

    def __init__(self, path, meta: dict, node: str | None = None, max_size: int | None = None,
                 max_age: float | None = None, keep: int | None = None, clock=time.monotonic):
        self.path = Path(path)
        self.meta = meta
        self.node = node
        self.max_size = max_size
        self.max_age = max_age
        self.rotating = bool(max_size or max_age)
        self.keep = keep if keep is not None else (10 if self.rotating else None)
        self.clock = clock
        self.fd = None
        self.size = 0
        self.opened_at = 0.0
        self.files: list[Path] = []         # every file this writer created (removed ones too)
        self.current: Path | None = None
        self.next_number = 1
        self.intervals = 0                  # intervals written
        self.dropped = 0                    # records larger than --max-size on their own
        self.bytes = 0
        if self.max_size is not None and self.max_size < MIN_MAX_SIZE:
            raise OutputError(f"--max-size {self.max_size} is below the smallest bound ({MIN_MAX_SIZE} bytes)")
        self._make_dir()
        if self.rotating:
            old = numbered_files(self.path)
            if old:
                raise OutputError(f"{old[0]}: a recording with this name exists (remove it or choose another --out)")
        self._open()

    # -- files --------------------------------------------------------------------------------------
    def _make_dir(self) -> None:
        make_private_dirs(self.path.parent)

    def _open(self) -> None:
        p = numbered(self.path, self.next_number) if self.rotating else self.path
        if self.rotating and self.keep:
            live = [f for f in self.files if f.exists()]
            for f in live[: max(0, len(live) - (self.keep - 1))]:
                f.unlink(missing_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise OutputError(f"{p}: exists (remove it or choose another --out)") from None
        except OSError as e:
            raise OutputError(f"{p}: cannot create ({e.strerror})") from None
        os.fchmod(fd, 0o600)
        self.fd, self.current, self.size, self.opened_at = fd, p, 0, self.clock()
        self.files.append(p)
        self.next_number += 1
        try:
            self._append(fm.header(self.meta))
        except OutputError:
            os.close(fd)
            self.fd = None
            p.unlink(missing_ok=True)
            raise

    def _append(self, data: bytes) -> None:
        """Write ``data`` whole, or truncate back and raise."""
        start = self.size
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            os.fsync(self.fd)
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass
            what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
            raise OutputError(f"{self.current}: write failed ({what}); recording stopped, "
                              f"{self.intervals} interval(s) written stay readable") from None
        self.size += len(data)
        self.bytes += len(data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # -- writing ------------------------------------------------------------------------------------
    def encode(self, records: list[dict], extra: dict | None = None, first: int | None = None) -> bytes:
        """The segments of one flush (ending in its commit segment), intervals numbered from
        ``first`` (default: the intervals written so far)."""
        tables = fm.encode(records, self.intervals if first is None else first, self.node)
        parts = [fm.segment(name, t) for name, t in tables.items() if name == "intervals" or t.num_rows]
        for name, t in (extra or {}).items():
            parts.append(fm.segment(name, t))
        parts.append(fm.commit())
        return b"".join(parts)

    def write(self, records: list[dict], extra: dict | None = None, first: int | None = None) -> None:
        if self.fd is None:
            raise OutputError(f"{self.path}: recording closed")
        if not records and not extra:
            return
        first = self.intervals if first is None else first
        data = self.encode(records, extra, first)
        if self.max_size is not None and len(fm.header(self.meta)) + len(data) > self.max_size and len(records) > 1:
            half = len(records) // 2            # two smaller flushes
            self.write(records[:half], None, first)
            self.write(records[half:], extra, first + half)
            return
        self.write_encoded(data, len(records))

    def write_encoded(self, data: bytes, count: int) -> None:
        """Append one flush already encoded (``encode``) holding ``count`` intervals."""
        if self.fd is None:
            raise OutputError(f"{self.path}: recording closed")
        if self.max_age and self.clock() - self.opened_at >= self.max_age and self.size > len(fm.header(self.meta)):
            self._rotate()
        if self.max_size is not None:
            if len(fm.header(self.meta)) + len(data) > self.max_size:
                self.dropped += count
                return
            if self.size + len(data) > self.max_size:
                self._rotate()
        self._append(data)
        self.intervals += count

    def _rotate(self) -> None:
        self.close()
        self._open()
