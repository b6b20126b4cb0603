"""Option decorators shared by commands."""
from __future__ import annotations

import click

# watch: outbound sockets from connect() to CLOSE sit in a direct-mapped table of this many slots
# (bpf/nd_common.h); one whose slot is taken goes to an LRU hash (ND_MAX_SOCKS, 262,144)
SOCKET_SLOTS = 65536
# watch: the first destinations each CPU counts have their rows in a direct-mapped per-CPU table of
# this many slots (bpf/agg.c nd_dst); the others in the LRU hash bounded by --max-dsts
DST_SLOTS = 1024


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable output (NDJSON / one JSON object).")(f)


def duration_option(default=None):
    def deco(f):
        return click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=default,
                            metavar="S", help="Stop after S seconds (default: until Ctrl-C).")(f)
    return deco


# --tracepoints NAME -> the engine's (raw_tracepoints, btf_tracepoints)
TRACEPOINT_FLAVOURS = {"auto": (None, None), "btf": (True, True), "raw": (True, False), "classic": (False, False)}


def flavour_kwargs(name: str) -> dict:
    raw, btf = TRACEPOINT_FLAVOURS[name]
    return {"raw_tracepoints": raw, "btf_tracepoints": btf}


def flavour_of(engine) -> str:
    """What the shared tracepoints attached as: btf, raw or classic."""
    return "btf" if getattr(engine, "btf_tp", False) else "raw" if engine.raw_tp else "classic"


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
