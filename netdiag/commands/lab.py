"""`netdiag lab`: reproduce an incident in throw-away namespaces while netdiag watches it."""
from __future__ import annotations

import json
import sys

import click

from netdiag.commands.options import json_option

EPILOG = "Run `netdiag lab list` for the scenarios and the incidents they reproduce."


@click.group("lab", epilog=EPILOG)
def command():
    """Reproduce a connection incident in namespaces and show netdiag's verdict.

    Each scenario builds namespaces (nd-l*, addresses in 198.18.0.0/15), runs the load
    generator through them while watching, ends with the verdicts, and removes everything on
    exit, error, Ctrl-C or SIGTERM (--keep leaves it for inspection).

    \b
    Example:
      sudo netdiag lab snat-cap --ports 13
      sudo netdiag lab idle-timeout --timeout 5 --json | jq 'select(.type=="lab").verdicts'
      sudo netdiag lab list
      sudo netdiag lab cleanup
    """


@command.command("list")
@json_option
def list_cmd(as_json):
    """Describe each scenario, its verdict and the seed incident it reproduces.

    \b
    Example:
      netdiag lab list
    """
    from netdiag.labs.scenarios import SCENARIOS
    rows = [{"scenario": s.name, "verdict": s.verdict, "seed": s.seed, "what": s.summary,
             "options": {p.name.replace("_", "-"): {"default": p.default, "help": p.help} for p in s.params}}
            for s in SCENARIOS.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        opts = " ".join(f"[--{k} {v['default']}]" for k, v in r["options"].items())
        click.echo(f"{r['scenario']:<16} {opts}")
        click.echo(f"    {r['what']}")
        click.echo(f"    verdict: {r['verdict'] or 'none'}    seed: {r['seed']}")


@command.command("cleanup")
@click.option("--all", "all_nd", is_flag=True, help="Remove every nd- namespace, not only lab ones (nd-l*).")
def cleanup_cmd(all_nd):
    """Remove namespaces (and their veths and rules) a lab left behind, and restore node-wide
    sysctls a killed lab had changed.

    \b
    Example:
      sudo netdiag lab cleanup
    """
    from netdiag.kernel.features import require_privileges
    from netdiag.labs import cleanup, restore_sysctls
    require_privileges()
    removed = cleanup(all_nd)
    click.echo(f"removed {len(removed)} namespace(s)" + (": " + " ".join(removed) if removed else ""))
    for r in restore_sysctls():
        click.echo(f"restored {r}")


def _scenario_command(sc):
    def run(as_json, keep, record_path=None, allow_host_sysctl=False, **params):
        _run_lab(sc.name, params, as_json, keep, allow_host_sysctl, record_path)

    run.__doc__ = (f"{sc.summary}.\n\n"
                   f"Expected verdict: {sc.verdict or 'none'}. Seed: {sc.seed}.\n\n"
                   f"\b\nExample:\n  sudo netdiag lab {sc.name}"
                   + "".join(f" --{p.name.replace('_', '-')} {p.default}" for p in sc.params[:1]) + "\n")
    cmd = run
    for p in reversed(sc.params):
        cmd = click.option(f"--{p.name.replace('_', '-')}", p.name, type=p.type, default=None, metavar="N",
                           help=f"{p.help} (default {p.default}).")(cmd)
    if sc.name == "conntrack-full":
        cmd = click.option("--allow-host-sysctl", is_flag=True,
                           help="Allow --max to change the node-wide nf_conntrack_max for the run (restored on exit).")(cmd)
    cmd = click.option("--record", "record_path", type=click.Path(dir_okay=False), metavar="PATH",
                       help="Also record the lab's intervals and result into this file (see netdiag record).")(cmd)
    cmd = click.option("--keep", is_flag=True, help="Leave the namespaces for inspection (remove with `netdiag lab cleanup`).")(cmd)
    cmd = json_option(cmd)
    return command.command(sc.name)(cmd)


def _register():
    from netdiag.labs.scenarios import SCENARIOS
    for sc in SCENARIOS.values():
        _scenario_command(sc)


_register()


def _run_lab(name, params, as_json, keep, allow_host_sysctl, record_path=None):
    from netdiag.inputs import check_output_file
    from netdiag.kernel.features import require_privileges
    from netdiag.labs import LabRunner
    from netdiag.labs.scenarios import SCENARIOS
    from netdiag.pipeline.run import stop_on_signals
    # bad input is refused before anything (namespaces, rules, sysctls, files, BPF) is made
    SCENARIOS[name].validate(params, allow_host_sysctl)
    if record_path:
        check_output_file(record_path, "--record")
    require_privileges()
    if as_json:
        from netdiag.sinks.ndjson import NdjsonSink
        sink = NdjsonSink()
    elif sys.stdout.isatty():
        from netdiag.sinks.live import LiveView
        sink = LiveView(12, title=f"netdiag lab {name}")
    else:
        from netdiag.sinks.plain import VerdictLines
        sink = VerdictLines()

    def on_status(msg):
        click.echo(f"netdiag lab: {msg}", err=True)

    sinks = [sink]
    if record_path:
        from netdiag.sinks.recorder import Recorder
        sinks.insert(0, Recorder(record_path))
    runner = LabRunner(name, params, keep=keep, allow_host_sysctl=allow_host_sysctl,
                       sinks=sinks, on_status=on_status)
    with stop_on_signals(runner.stop):
        result = runner.run()
    if result["error"]:
        click.echo(f"netdiag lab: error: {result['error']}", err=True)
        sys.exit(70)
    if result["interrupted"]:
        sys.exit(130)
