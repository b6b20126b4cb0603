"""`netdiag report`: the diagnosis again, offline, over recordings and `watch --json` NDJSON."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import click

from netdiag.commands.options import json_option


def parse_time(text: str) -> float:
    """Unix seconds, or ISO 8601 (UTC when no zone is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a time (Unix seconds or ISO 8601, e.g. 2024-05-01T03:12:00Z)")
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


class When(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):
        try:
            return value if isinstance(value, float) else parse_time(value)
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


@click.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--since", type=When(), metavar="TIME", help="Only intervals ending at or after TIME (Unix seconds or ISO 8601).")
@click.option("--until", type=When(), metavar="TIME", help="Only intervals ending at or before TIME.")
@click.option("--dst", metavar="CIDR", help="Only destinations (and their verdicts) inside this network.")
@click.option("--domain", metavar="NAME", help="Only destinations (and verdicts) of this domain.")
@click.option("--pod", metavar="NAME", help="Only destinations (and verdicts) of this pod.")
@click.option("--node", metavar="NAME", help="Only this node's intervals.")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE",
              help="Diagnose again with this threshold changed (docs/verdicts.md names them); repeatable.")
@click.option("--recorded-verdicts", "recorded", is_flag=True,
              help="Take the verdicts the live run recorded instead of diagnosing again (faster on long "
                   "recordings; not with --threshold).")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Rows per table (text output).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT",
              help="Also write one self-contained HTML file with the tables and plots.")
@click.option("--png", "png_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also write the plots as PNG images into DIR.")
@json_option
def command(files, since, until, dst, domain, pod, node, thresholds, recorded, top, html_out, png_dir, as_json):
    """Report on recordings (netdiag record) and watch --json NDJSON, with the diagnosis run again.

    Reads every FILE (a directory: the recordings in it), one node or many, and replays the
    recorded intervals through the same diagnosis as the live run: the verdicts, their numbers and
    evidence, and the incident timeline; tables per node, destination, domain, pod, listener, NAT
    and conntrack table, with pandas.

    \b
    Examples:
      netdiag report node-a.ndrec node-b.ndrec
      netdiag report node.ndrec --since 2024-05-01T03:00Z --until 2024-05-01T03:30Z --html incident.html
      kubectl logs ds/netdiag > node.ndjson; netdiag report node.ndjson --json
      netdiag report node.ndrec --threshold confirm_intervals=1
    """
    import importlib.util

    from netdiag.errors import ExtraMissing
    missing = [m for m in ("pandas", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExtraMissing(f"report needs {' and '.join(missing)}: pip install 'netdiag[report]' "
                           "(the container image leaves them out; copy the recording off the node)")
    from netdiag.inputs import check_output_dir, check_output_file
    from netdiag.offline import report as rp
    if html_out is not None:                # before the (long) read: an unusable output fails now
        check_output_file(html_out, "--html", may_exist=True, make_dirs=False)
    if png_dir is not None:
        check_output_dir(png_dir, "--png")
    if since is not None and until is not None and since > until:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    if dst:
        import ipaddress
        try:
            ipaddress.ip_network(dst, strict=False)
        except ValueError:
            raise click.BadParameter(f"{dst!r} is not a network (e.g. 10.0.0.0/8)", param_hint="--dst")
    if recorded and thresholds:
        raise click.BadParameter("--threshold needs the diagnosis: not with --recorded-verdicts",
                                 param_hint="--recorded-verdicts")
    try:
        th = rp.thresholds(thresholds)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--threshold")
    sources = [rp.load(p) for p in rp.expand(files)]
    report = rp.Report(sources, th, rp.Filters(since, until, dst, domain, pod, node), recorded=recorded)
    for n in report.notes:
        click.echo(f"netdiag report: {n}", err=True)
    if png_dir is not None or html_out is not None:
        from netdiag.offline import plots
        if png_dir is not None:
            plots.write_pngs(report, png_dir)
        if html_out is not None:
            plots.write_html(report, html_out)
    if as_json:
        click.echo(json.dumps(report.as_json(), default=str))
        return
    click.echo(render_text(report, top).translate(_CONTROL))


# what a recording's strings (a process's comm, a pod's name) may hold but a terminal must not get
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)] if c != 0x0a}


def _when(ts) -> str:
    if ts is None or ts != ts:
        return "-"
    return _dt.datetime.fromtimestamp(float(ts), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


TITLES = {"nodes": "Per node", "node_totals": "All nodes", "destinations": "Per destination",
          "domains": "Per domain (per node)", "domains_all_nodes": "Per domain (all nodes)", "pods": "Per pod",
          "listeners": "Listeners", "nat": "SNAT ports against the range", "conntrack": "Conntrack fill",
          "timeline": "Incident timeline (replayed verdicts)"}


def render_text(report, top: int) -> str:
    import pandas as pd
    out = []
    for s in report.snapshots:
        out.append(_snapshot_text(s))
    if report.nodes:
        out.append(f"netdiag report: {len(report.nodes)} node(s): {', '.join(report.nodes)}")
    for name, title in TITLES.items():
        df = report.tables.get(name)
        if df is None:
            continue
        df = df.head(top).copy()
        for c in df.columns:
            if c.endswith("_ts"):
                df[c] = df[c].map(_when)
        with pd.option_context("display.width", 200, "display.max_columns", 40):
            out.append(f"\n{title}\n{df.to_string(index=False)}")
    if report.nodes:
        out.append("\nVerdicts")
        if not report.verdicts:
            out.append("  none")
        for v in report.verdicts:
            from netdiag.analysis.diagnose import NUMBER
            num = NUMBER.get(v["kind"])
            out.append(f"  [{v['node']}] {v['kind']} {num}={v.get(num)} dst={v.get('dst') or v.get('listener')} "
                       f"{_when(v.get('first_ts'))} → {_when(v.get('last_ts'))} ({v.get('intervals')} intervals)")
            out.append(f"      where: {v.get('where')}")
            out.append(f"      evidence: {json.dumps(v.get('evidence'), default=str)}")
            if v.get("advice"):
                out.append(f"      fix: {v['advice']}")
    return "\n".join(out)


def _snapshot_text(src) -> str:
    snap = src.meta.get("snapshot") or {}
    lines = [f"snapshot of {snap.get('node')} at {_when(snap.get('ts'))} ({src.path})"]
    for k, v in (snap.get("sysctls") or {}).items():
        lines.append(f"  {k} = {v}")
    from netdiag.offline import format as fm
    for name in ("sockets", "listeners", "conntrack", "netstat", "doctor"):
        df = src.tables.get(name) if src.tables else None
        if df is not None and df.num_rows:
            lines.append(f"\n{name}\n{df.to_pandas().head(40).to_string(index=False)}")
    _ = fm
    return "\n".join(lines)
