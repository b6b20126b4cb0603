"""`netdiag record`: `watch` into a recording (a bounded, durable Parquet file) instead of a screen."""
from __future__ import annotations

import re
from pathlib import Path

import click

from netdiag.commands.options import duration_option, finite, interval_option
from netdiag.commands.watch import filter_options, run_watch

_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_TUNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)i?[bB]?\s*", text or "")
    if not m:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 64M, 1G, 500000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdSMHD]?)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 90, 10m, 1h)")
    return float(m.group(1)) * _TUNITS[m.group(2).lower()]


class Size(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        try:
            return value if isinstance(value, int) else parse_size(value)
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        try:
            return value if isinstance(value, float) else parse_duration(value)
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


@click.command("record")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="The recording (file 0600, its directory made 0700); with --max-size/--max-age, numbered "
                   "files PATH-stem.000001.ndrec, … next to it.")
@click.option("--node", metavar="NAME", help="The node name stored in the recording (default: the host name).")
@interval_option()
@duration_option()
@click.option("--flush", "flush_s", type=finite(min=0.1), default=10.0, show_default=True, metavar="S",
              help="Write buffered intervals to the file at least this often (SIGKILL loses at most this window).")
@click.option("--max-size", type=Size(), metavar="SIZE",
              help="Rotate to the next numbered file before one would pass SIZE bytes (k/M/G suffixes).")
@click.option("--max-age", type=Duration(), metavar="DURATION",
              help="Rotate to the next numbered file after DURATION (s/m/h/d suffixes).")
@click.option("--keep", type=click.IntRange(min=1), metavar="N",
              help="Keep at most N numbered files, removing the oldest (default 10 with --max-size/--max-age).")
@click.option("--ring", "ring", type=Duration(), metavar="DURATION",
              help="Flight recorder: keep the last DURATION in memory and write nothing until a verdict fires; "
                   "then write those and what follows for DURATION.")
@click.option("--trigger", metavar="verdict[:KIND,…]",
              help="With --ring: the verdicts that start writing (default: any verdict).")
@filter_options
def command(out, node, interval, duration, flush_s, max_size, max_age, keep, ring, trigger, **options):
    """Record every interval of `watch` into a file for `netdiag report`.

    Destinations, listeners, node totals, conntrack and SNAT, DNS and pod roll-ups, verdicts, modes
    and lost events, as Parquet tables (docs/recording.md), with the node's context (host name,
    kernel, the sysctls that bound connections, NAT rules and ranges). Ctrl-C or SIGTERM closes
    the file complete and prints one line.

    \b
    Examples:
      sudo netdiag record --out /var/lib/netdiag/node.ndrec --duration 3600
      sudo netdiag record --out /var/lib/netdiag/node.ndrec --max-size 256M --keep 8
      sudo netdiag record --out /var/lib/netdiag/incident.ndrec --ring 10m --trigger verdict:snat_port_exhaustion
    """
    from netdiag.inputs import check_name
    from netdiag.offline.writer import MIN_MAX_SIZE, check_recording_path
    from netdiag.sinks.ready import ReadyFile
    from netdiag.sinks.recorder import Recorder, parse_trigger
    if trigger is not None and ring is None:
        raise click.BadParameter("--trigger needs --ring", param_hint="--trigger")
    if keep is not None and not (max_size or max_age):
        raise click.BadParameter("--keep needs --max-size or --max-age", param_hint="--keep")
    if max_size is not None and max_size < MIN_MAX_SIZE:
        raise click.BadParameter(f"{max_size} is below the smallest bound ({MIN_MAX_SIZE} bytes)",
                                 param_hint="--max-size")
    kinds = parse_trigger(trigger) if ring is not None else None
    if node is not None:
        check_name(node, "--node")
    check_recording_path(out, rotating=bool(max_size or max_age))
    recorder = Recorder(out, node=node, flush_s=flush_s, max_size=max_size, max_age=max_age, keep=keep,
                        ring_s=ring, trigger=kinds)
    sinks = [recorder]
    if options["ready_file"]:
        sinks.append(ReadyFile(options["ready_file"]))
    run_watch(interval, duration, sinks, recorder=recorder, **options)
