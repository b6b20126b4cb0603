"""Option decorators shared by commands."""
from __future__ import annotations

import click

from netdiag.kernel.engine import DST_SLOTS, SOCKET_SLOTS, TRACEPOINT_FLAVOURS, flavour_kwargs, flavour_of  # noqa: F401


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable output (NDJSON / one JSON object).")(f)


def duration_option(default=None):
    def deco(f):
        return click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=default,
                            metavar="S", help="Stop after S seconds (default: until Ctrl-C).")(f)
    return deco


def tracepoints_option(f):
    """How the shared tracepoints (socket state, resets, drops) attach."""
    return click.option("--tracepoints", "tracepoints", type=click.Choice(list(TRACEPOINT_FLAVOURS)),
                        default="auto", show_default=True,
                        help="btf: BTF-typed arguments, socket fields read by plain loads (cheapest; "
                             "not with kprobe connect/accept); raw: arguments handed to BPF directly, fields "
                             "read through bpf_probe_read_kernel (needs BTF offsets); classic: the kernel "
                             "fills a record first; auto: the cheapest the kernel allows.")(f)


def interval_option(default=1.0):
    def deco(f):
        return click.option("--interval", type=click.FloatRange(min=0.05), default=default, show_default=True,
                            metavar="S", help="Seconds between reports.")(f)
    return deco
