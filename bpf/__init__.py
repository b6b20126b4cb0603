"""netdiag's BPF C sources (``*.c`` programs, ``*.h`` shared headers), installed as package data.

This folder is the package ``netdiag.bpf`` in every installed form (editable, wheel, sdist, the
container image): it is a regular package, so its location is a real directory on disk, found
from this file and never from the current directory or a checkout path.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

SOURCE_SUFFIXES = (".c", ".h")


def source_dir() -> Path:
    """The directory holding the C sources BCC compiles (``-I`` points here)."""
    return Path(__file__).resolve().parent


def sources() -> list[Path]:
    """Every C source and header in :func:`source_dir`, sorted by name."""
    d = source_dir()
    return sorted(p for p in d.iterdir() if p.suffix in SOURCE_SUFFIXES and p.is_file())


def digest() -> str:
    """SHA-256 over the names and contents of the sources in :func:`source_dir`: the C that is
    actually compiled, whichever form netdiag was installed in."""
    h = hashlib.sha256()
    for p in sources():
        h.update(b"bpf/" + p.name.encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()
