"""Option decorators shared by commands."""
from __future__ import annotations

import math

import click

from netdiag.kernel.engine import DST_SLOTS, SOCKET_SLOTS, TRACEPOINT_FLAVOURS, flavour_kwargs, flavour_of  # noqa: F401


class Finite(click.FloatRange):
    """A float in a range that is also a number: ``nan`` and ``inf`` are usage errors (exit 2)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()


def finite(min=None, max=None, min_open=False, max_open=False) -> Finite:
    return Finite(min=min, max=max, min_open=min_open, max_open=max_open)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable output (NDJSON / one JSON object).")(f)


def duration_option(default=None):
    def deco(f):
        return click.option("--duration", type=finite(min=0, min_open=True), default=default,
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
        return click.option("--interval", type=finite(min=0.05), default=default, show_default=True,
                            metavar="S", help="Seconds between reports.")(f)
    return deco
