"""tracefs: mounting it, finding tracepoints, and reading enum names from their format files.

Enum values (TCP states, drop reasons, RST reasons) differ between kernels, so netdiag reads
them from ``events/<sys>/<event>/format`` of the running kernel instead of hard-coding them.
"""
from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

from netdiag.errors import BadInput, FeatureMissing

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def tracefs_root(mount: bool = True) -> Path:
    """The tracefs mount point; mounts it at /sys/kernel/tracing when absent and ``mount``."""
    for root in TRACEFS_CANDIDATES:
        if _is_dir(root / "events"):
            return root
    if mount and os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tracefs", "none", str(TRACEFS_CANDIDATES[0])],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if _is_dir(TRACEFS_CANDIDATES[0] / "events"):
            return TRACEFS_CANDIDATES[0]
    if any(_denied(r) for r in TRACEFS_CANDIDATES):
        raise FeatureMissing("tracefs", "tracefs is not readable without root")
    raise FeatureMissing("tracefs", "tracefs is not mounted; run: mount -t tracefs none /sys/kernel/tracing")


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False


def _denied(p: Path) -> bool:
    try:
        os.listdir(p)
        return False
    except PermissionError:
        return True
    except OSError:
        return False


def tracepoint_exists(category: str, event: str, root: Path | None = None) -> bool:
    try:
        root = root or tracefs_root()
    except FeatureMissing:
        return False
    try:
        return (root / "events" / category / event / "format").is_file()
    except OSError:
        return False


def read_format(category: str, event: str, root: Path | None = None) -> str:
    root = root or tracefs_root()
    path = root / "events" / category / event / "format"
    try:
        return path.read_text()
    except OSError as e:
        raise FeatureMissing(f"tracepoint {category}:{event}",
                             f"tracepoint {category}:{event} is not available on this kernel") from e


_SYMBOLIC = re.compile(r"__print_symbolic\(\s*REC->(\w+)\s*,")
_PAIR = re.compile(r"\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*\"([^\"]*)\"\s*\}")


def parse_symbolic(format_text: str) -> dict[str, dict[int, str]]:
    """Map each field printed with ``__print_symbolic`` to its {value: name} table.

    >>> parse_symbolic('print fmt: "%s", __print_symbolic(REC->state, { 1, "A" }, { 2, "B" })')
    {'state': {1: 'A', 2: 'B'}}
    """
    line = next((ln for ln in format_text.splitlines() if ln.startswith("print fmt:")), None)
    if line is None:
        raise BadInput("tracepoint format file has no 'print fmt' line")
    out: dict[str, dict[int, str]] = {}
    matches = list(_SYMBOLIC.finditer(line))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        table = {int(v, 0): name for v, name in _PAIR.findall(line[m.end():end])}
        # a field printed twice keeps the first table
        out.setdefault(m.group(1), table)
    return out


def parse_fields(format_text: str) -> dict[str, tuple[int, int]]:
    """field name -> (offset, size) from a format file."""
    out = {}
    for m in re.finditer(r"field:[^;]*?(\w+)(?:\[\w*\])?;\s*offset:(\d+);\s*size:(\d+);", format_text):
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


@lru_cache(maxsize=None)
def enum_table(category: str, event: str, field: str) -> dict[int, str]:
    table = parse_symbolic(read_format(category, event)).get(field)
    if not table:
        raise FeatureMissing(f"tracepoint {category}:{event}",
                             f"{category}:{event} does not print {field} symbolically on this kernel")
    return table


def enum_value(table: dict[int, str], name: str) -> int:
    for value, n in table.items():
        if n == name:
            return value
    raise KeyError(name)


def tcp_states() -> dict[int, str]:
    return enum_table("sock", "inet_sock_set_state", "newstate")
