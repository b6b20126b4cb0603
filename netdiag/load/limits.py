"""Process and kernel limits that cap how many connections one run can open.

The load generator raises RLIMIT_NOFILE itself; when the hard limit, ``fs.nr_open``,
``fs.file-max`` or ``net.ipv4.ip_local_port_range`` stops it, :class:`ResourceLimit` says which
one and how to change it.
"""
from __future__ import annotations

import resource
from pathlib import Path
from typing import Tuple

from netdiag.errors import EXIT_CONFIG, NetdiagError

# fds a worker uses besides its connections: stdio, epoll, pipes, listeners, imports.
FD_SLACK = 64


class ResourceLimit(NetdiagError):
    """A process or kernel limit is below what the run needs; the message names the knob."""
    exit_code = EXIT_CONFIG


def read_int(path: str, default: int | None = None) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def nr_open() -> int:
    return read_int("/proc/sys/fs/nr_open", 1048576)


def file_max() -> int:
    return read_int("/proc/sys/fs/file-max", 1 << 62)


def files_in_use() -> int:
    try:
        return int(Path("/proc/sys/fs/file-nr").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def local_port_range() -> Tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def local_port_count() -> int:
    lo, hi = local_port_range()
    return hi - lo + 1


def max_fds_per_process() -> int:
    """The most RLIMIT_NOFILE can become in this process without privileges it lacks."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return nr_open()
    return hard


def raise_nofile(need: int) -> int:
    """Make RLIMIT_NOFILE's soft limit at least ``need`` (raising the hard limit when allowed).

    Returns the new soft limit. Raises ResourceLimit naming the limit that stops it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        cap = nr_open()
        if need > cap:
            raise ResourceLimit(
                f"need {need} open files per process but fs.nr_open is {cap}: "
                f"run 'sysctl -w fs.nr_open={_round_up(need)}' or use more --workers")
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            raise ResourceLimit(
                f"need {need} open files per process but the hard limit (ulimit -Hn) is {hard} "
                f"and only root can raise it: run as root, or raise 'nofile' in /etc/security/limits.conf "
                f"(e.g. '* hard nofile {_round_up(need)}'), or use more --workers") from None
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


def check_file_max(need_total: int) -> None:
    """Raise ResourceLimit when fs.file-max cannot hold ``need_total`` more open files."""
    fmax = file_max()
    free = fmax - files_in_use()
    if need_total > free:
        raise ResourceLimit(
            f"need {need_total} more open files system-wide but fs.file-max ({fmax}) leaves {free}: "
            f"run 'sysctl -w fs.file-max={_round_up(files_in_use() + need_total)}'")


def check_port_capacity(per_tuple_max: int, n_sources: int) -> None:
    """Each (source address, destination address, destination port) can use each local port once.

    ``per_tuple_max`` is the largest number of connections the plan puts on one such triple.
    """
    ports = local_port_count()
    if per_tuple_max > ports:
        lo, hi = local_port_range()
        raise ResourceLimit(
            f"{per_tuple_max} connections share one source address and destination, but "
            f"net.ipv4.ip_local_port_range ({lo} {hi}) gives only {ports} ports: add source addresses "
            f"(--source-ips 127.0.0.2-127.0.0.{min(254, 1 + (per_tuple_max * max(n_sources, 1)) // ports + 1)} "
            f"on loopback), add destination ports, "
            f"or run 'sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"'")


def _round_up(n: int) -> int:
    step = 1 << 16
    return ((n + step - 1) // step) * step
