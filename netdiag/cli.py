"""netdiag's command-line entry point: the click group. Each command lives in netdiag/commands/."""
from __future__ import annotations

import importlib
import importlib.util
import signal
import sys

import click

from netdiag import __version__
from netdiag.errors import NetdiagError

# command name -> module under netdiag.commands exposing `command`; imported only when used,
# so `netdiag --help` needs neither bcc nor root.
COMMANDS = {
    "doctor": "doctor",
    "trace": "trace",
    "load": "load",
    "watch": "watch",
    "conntrack": "conntrack",
    "lab": "lab",
    "record": "record",
    "report": "report",
    "snapshot": "snapshot",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name, mod in COMMANDS.items() if _module_exists(mod))

    def get_command(self, ctx, name):
        mod = COMMANDS.get(name)
        if mod is None or not _module_exists(mod):
            return None
        return importlib.import_module(f"netdiag.commands.{mod}").command


def _module_exists(mod: str) -> bool:
    return importlib.util.find_spec(f"netdiag.commands.{mod}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netdiag")
@click.option("-v", "--verbose", is_flag=True, help="Show details of failures (BPF verifier logs).")
@click.pass_context
def cli(ctx, verbose):
    """netdiag: find where TCP connections are capped, dropped or reset, and why.

    \b
    Examples:
      sudo netdiag doctor            what this kernel lets netdiag do
      sudo netdiag trace --json      connect/accept events as NDJSON
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(text: str) -> str:
    """An error message as one line with no control characters: it may quote a file's contents
    (a key of a recording, a line of NDJSON), which must not move the cursor or recolour the
    terminal."""
    return text.translate(_CONTROL)


def one_line(e: click.ClickException) -> str:
    """A click error as one line, with where to read the usage (usage errors)."""
    text = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        text += f" (see '{ctx.command_path} --help')"
    return text


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def main(argv=None):
    # until a command installs its own handlers (watch, trace, lab, …: a clean stop), SIGTERM and
    # SIGHUP end netdiag like Ctrl-C: finally blocks run, exit 130, no traceback
    for sig in (signal.SIGTERM, signal.SIGHUP) if argv is None else ():
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _interrupt)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="netdiag", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"netdiag: error: {printable(one_line(e))}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except NetdiagError as e:
        click.echo(f"netdiag: error: {printable(str(e))}", err=True)
        verbose = "-v" in args or "--verbose" in args
        if e.detail and verbose:
            click.echo(e.detail, err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)


if __name__ == "__main__":
    main()
