"""Checks of what a user hands netdiag (names, output paths), shared by every layer and run before
anything is created: a refusal here leaves no namespace, rule, file or BPF program behind."""
from __future__ import annotations

import os
import re
from pathlib import Path

from netdiag.errors import BadInput, OutputError

# ip-netns, host and Kubernetes node names: letters, digits, '.', '_', '-' (and ':' for node names
# given as addresses); no path separator, no shell metacharacter, no white space.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]*")
NAME_MAX = 253


def check_name(value: str, what: str) -> str:
    """``value`` as a namespace / node name, or BadInput naming ``what`` (e.g. "--node")."""
    if not isinstance(value, str) or not value:
        raise BadInput(f"{what}: empty name")
    if len(value) > NAME_MAX:
        raise BadInput(f"{what}: name longer than {NAME_MAX} characters")
    if not _NAME.fullmatch(value) or value in (".", ".."):
        raise BadInput(f"{what} {value!r}: not a name (letters, digits, '.', '_', '-', ':'; no '/', "
                       f"white space or shell metacharacters)")
    return value


def check_netns_spec(spec: str, what: str = "--netns") -> str:
    """``--netns NAME|INODE``: an inode number or an ip-netns name."""
    if isinstance(spec, str) and spec.isdigit():
        if int(spec) == 0 or int(spec) >= 2 ** 64:
            raise BadInput(f"{what} {spec}: not a namespace inode")
        return spec
    return check_name(spec, what)


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_file(path, what: str = "--out", *, may_exist: bool = False, make_dirs: bool = True) -> Path:
    """``path`` can be created as a new file: not a directory, not there yet (unless
    ``may_exist``), its directory there (or, with ``make_dirs``, creatable) and writable.
    Raises OutputError (exit 73) naming ``what``; creates nothing."""
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise OutputError(f"{what} {str(path)!r}: not a file name")
    if p.is_dir():
        raise OutputError(f"{what} {p}: is a directory")
    if p.exists() or p.is_symlink():
        if not may_exist:
            raise OutputError(f"{what} {p}: exists (remove it or choose another name)")
        if not os.access(p, os.W_OK):
            raise OutputError(f"{what} {p}: not writable")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        if not make_dirs:
            raise OutputError(f"{what} {p}: directory {parent} does not exist")
        base = _nearest_existing(parent)
        if not base.is_dir():
            raise OutputError(f"{what} {p}: {base} is not a directory")
        parent = base
    elif not parent.is_dir():
        raise OutputError(f"{what} {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {p}: directory {parent} is not writable")
    return p


def check_output_dir(path, what: str) -> Path:
    """``path`` is a directory, or can be made one (with its parents); writable."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise OutputError(f"{what} {d}: not a directory")
    base = _nearest_existing(d)
    if not base.is_dir():
        raise OutputError(f"{what} {d}: {base} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {d}: directory {base} is not writable")
    return d
