"""`netdiag doctor`: a yes/no/skipped table of what this kernel offers."""
from __future__ import annotations

import json
import sys

import click

from netdiag.commands.options import json_option
from netdiag.errors import EXIT_NOPERM

STYLE = {"yes": "green", "no": "red", "skipped": "yellow", "stand-in": "yellow"}


@click.command("doctor")
@json_option
def command(as_json):
    """Check what this kernel lets netdiag do and which hook each signal will use.

    \b
    Example:
      sudo netdiag doctor
      sudo netdiag doctor --json | jq .modes
    """
    from netdiag.kernel.doctor import run_checks

    report = run_checks()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _render(report)
    priv = next(c for c in report["checks"] if c["name"] == "privileges")
    if priv["status"] != "yes":
        click.echo("netdiag: error: not root: kernel checks were skipped; run as root (sudo netdiag doctor)",
                   err=True)
        sys.exit(EXIT_NOPERM)


def _render(report):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"netdiag doctor — kernel {report['kernel']}", title_justify="left")
    t.add_column("check")
    t.add_column("status")
    t.add_column("detail", overflow="fold")
    t.add_column("fix", overflow="fold")
    for c in report["checks"]:
        t.add_row(c["name"], f"[{STYLE.get(c['status'], '')}]{c['status']}[/]", c["detail"], c["fix"])
    for sig, mode in report["modes"].items():
        avail = ", ".join(m for m, ok in report["available_modes"][sig].items() if ok) or "none"
        t.add_row(f"mode: {sig}", f"[{'green' if mode else 'red'}]{mode or 'none'}[/]",
                  f"available here: {avail}", "" if mode else "no hook works for this signal")
    console.print(t)
