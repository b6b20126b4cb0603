"""Where the BPF C sources are, and a digest of them.

The sources are the package ``netdiag.bpf`` (the checkout's ``bpf/`` folder, mapped by
``pyproject.toml``), located through the import system: the same in an editable install, a wheel,
an sdist or the container image. A source tree run without any install (``python -S`` with the
checkout on ``sys.path``) has no mapping for that package; there the checkout's ``bpf/`` folder is
used, and only when it is there.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from netdiag.errors import BpfLoadError

SUFFIXES = (".c", ".h")
_CHECKOUT = Path(__file__).resolve().parent.parent / "bpf"


def source_dir() -> Path:
    """The directory holding the C sources BCC compiles (``-I`` points here)."""
    spec = importlib.util.find_spec("netdiag.bpf")
    if spec is not None and spec.origin:
        d = Path(spec.origin).resolve().parent
    else:
        d = _CHECKOUT
    if not (d / "nd_common.h").is_file():
        raise BpfLoadError(f"netdiag's BPF sources are missing (looked in {d}): reinstall netdiag")
    return d


def sources() -> list[Path]:
    """Every C source and header netdiag compiles, sorted by name."""
    return sorted(p for p in source_dir().iterdir() if p.suffix in SUFFIXES and p.is_file())


def digest() -> str:
    """SHA-256 over the names and contents of :func:`sources`: the C actually compiled."""
    h = hashlib.sha256()
    for p in sources():
        h.update(b"bpf/" + p.name.encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()
