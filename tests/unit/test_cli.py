"""The CLI without bcc or root: help, docs that cannot drift, --dump-bpf, error exits."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from netdiag.cli import cli
from tests.unprivileged import run_netdiag

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "commands"


def commands():
    return cli.list_commands(None)


def run_unprivileged(args, **kw):
    """Run `python -m netdiag ARGS` as an unprivileged user (drops root when we have it)."""
    return run_netdiag(args, **kw)


def test_help_needs_no_bcc():
    # a fresh interpreter: --help must not import bcc
    code = "import sys; from netdiag.cli import main; sys.argv=['netdiag','--help']\n" \
           "try: main()\nexcept SystemExit: pass\nassert 'bcc' not in sys.modules, 'bcc imported'"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "doctor" in p.stdout and "trace" in p.stdout


@pytest.mark.parametrize("name", commands())
def test_every_command_has_help_with_example_and_a_docs_page(name):
    res = CliRunner().invoke(cli, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example" in res.output
    page = DOCS / f"{name}.md"
    assert page.is_file(), f"docs/commands/{name}.md missing"
    text = page.read_text()
    assert "## OVERHEAD" in text and "## CAVEATS" in text


def test_trace_rejects_bad_arguments():
    res = CliRunner().invoke(cli, ["trace", "bogus"])
    assert res.exit_code == 2 and "bogus" in res.output
    res = CliRunner().invoke(cli, ["trace", "--duration", "-1"])
    assert res.exit_code == 2


def test_watch_socket_slots_must_be_a_power_of_two():
    res = CliRunner().invoke(cli, ["watch", "--socket-slots", "3000"])
    assert res.exit_code == 2 and "3000 is not a power of two" in res.output
    res = CliRunner().invoke(cli, ["watch", "--socket-slots", "1"])
    assert res.exit_code == 2


def test_watch_dst_slots_must_be_a_power_of_two():
    res = CliRunner().invoke(cli, ["watch", "--dst-slots", "1000"])
    assert res.exit_code == 2 and "1000 is not a power of two" in res.output
    res = CliRunner().invoke(cli, ["watch", "--dst-slots", "0"])
    assert res.exit_code == 2


def test_not_root_exits_77_with_one_line():
    p = run_unprivileged(["trace", "--duration", "1"])
    assert p.returncode == 77, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "root" in lines[0] and "Traceback" not in p.stderr


def test_dump_bpf_without_root():
    p = run_unprivileged(["trace", "--dump-bpf"])
    assert p.returncode == 0, p.stderr
    assert "TRACEPOINT_PROBE(sock, inet_sock_set_state)" in p.stdout
    assert "#define ND_CONNECT_MODE" in p.stdout and "struct nd_event" in p.stdout


def test_unknown_netns_is_one_line_error():
    p = run_unprivileged(["trace", "--netns", "nd-does-not-exist", "--dump-bpf"])
    assert p.returncode == 65 and "nd-does-not-exist" in p.stderr and "Traceback" not in p.stderr


def test_bcc_missing_points_to_setup():
    if os.geteuid() != 0:
        pytest.skip("reaching the bcc import needs root (the privilege check comes first)")
    # -S: no site processing, so the venv's .pth that exposes Debian's bcc is not read
    site = sysconfig.get_paths()["purelib"]
    code = (f"import sys; sys.path[:0]=[{str(ROOT)!r}, {site!r}]; sys.argv=['netdiag','trace','--duration','1'];"
            "from netdiag.cli import main; main()")
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert p.returncode == 78, p.stderr
    assert "scripts/setup.sh" in p.stderr and "Traceback" not in p.stderr


def test_verbose_shows_error_detail(monkeypatch, capsys):
    import click

    from netdiag import cli as climod
    from netdiag.errors import BpfLoadError

    @click.command("boom")
    def boom():
        """Example: none."""
        raise BpfLoadError("BPF load/attach failed: x (run with -v for the verifier log)", detail="R0 invalid mem access")

    monkeypatch.setitem(climod.COMMANDS, "boom", "boom")
    monkeypatch.setattr(climod.LazyGroup, "get_command", lambda self, ctx, name: boom if name == "boom" else None)
    for argv, shown in ((["boom"], False), (["-v", "boom"], True)):
        with pytest.raises(SystemExit) as ei:
            climod.main(argv)
        assert ei.value.code == 70
        err = capsys.readouterr().err
        assert err.startswith("netdiag: error: BPF load/attach failed")
        assert ("R0 invalid mem access" in err) == shown


def test_watch_max_socks_has_a_floor():
    res = CliRunner().invoke(cli, ["watch", "--max-socks", "10"])
    assert res.exit_code == 2 and "--max-socks" in res.output
