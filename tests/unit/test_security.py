"""Security properties that need neither root nor sockets: every command's --help and `report`
run as an unprivileged user (nobody), recordings and snapshots are private, nothing netdiag runs
goes through a shell, and reading a file cannot run code (no pickle, no eval, pandas metadata and
Arrow extension types from the file are not trusted)."""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from netdiag.cli import cli
from tests.unprivileged import run_netdiag

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "netdiag"
GOLDEN = ROOT / "tests" / "data" / "golden"


def as_nobody(args, cwd="/"):
    """`python -m netdiag ARGS` as nobody:nogroup with no capabilities (skips when the tests do
    not run as root: then they already run unprivileged, which is what is tested)."""
    return run_netdiag(args, cwd=cwd, timeout=120)


def every_command() -> list[list[str]]:
    """Every command and sub-command, as argv prefixes."""
    import click
    out = []

    def walk(cmd, path):
        out.append(path)
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(None):
                walk(cmd.get_command(None, name), path + [name])
    walk(cli, [])
    return out


@pytest.mark.parametrize("argv", every_command(), ids=lambda a: " ".join(a) or "netdiag")
def test_help_runs_as_nobody(argv):
    p = as_nobody([*argv, "--help"])
    assert p.returncode == 0, p.stderr
    assert "Usage:" in p.stdout and "Traceback" not in p.stderr


def test_report_runs_as_nobody(tmp_path):
    d = Path(tempfile.mkdtemp(prefix="nd-nobody-"))
    try:
        os.chmod(d, 0o755)
        src = d / "healthy.ndjson"
        shutil.copy(GOLDEN / "healthy.ndjson", src)
        os.chmod(src, 0o644)
        p = as_nobody(["report", str(src), "--json"])
        assert p.returncode == 0, p.stderr
        assert '"type": "report"' in p.stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_snapshot_files_are_private(tmp_path):
    import pyarrow as pa

    from netdiag.offline import snapshot
    out = tmp_path / "a" / "b" / "s.ndsnap"
    snapshot.write(out, {"kind": "snapshot", "context": {}, "snapshot": {}}, {"sockets": pa.table({"x": [1]})})
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(out.parent.parent.stat().st_mode) == 0o700


def test_report_outputs_are_private(tmp_path):
    from netdiag.offline import plots
    plots._write(tmp_path / "r.html", b"x")
    assert stat.S_IMODE((tmp_path / "r.html").stat().st_mode) == 0o600


def _sources():
    return [p for p in PACKAGE.rglob("*.py")]


def test_no_shell_anywhere():
    """User input reaches programs (ip, iptables, nft, sysctl, nginx) as argv items, never through
    a shell: no shell=True, os.system, os.popen, or subprocess given a string."""
    bad = []
    pat = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.\w+\(\s*f?[\"']|commands\.getoutput")
    for p in _sources():
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if pat.search(line):
                bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_nothing_reads_code_from_data():
    """report reads files from other machines: nothing in netdiag unpickles, evals or execs."""
    bad = []
    pat = re.compile(r"\bpickle\b|\bmarshal\b|\bshelve\b|\beval\(|\bexec\(|yaml\.load\(|read_pickle|"
                     r"allow_pickle|dill\b|cloudpickle|jsonpickle")
    for p in _sources():
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if pat.search(line):
                bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


class _Marker:
    """Unpickling this creates a file: the proof that a file's bytes ran as code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_arrow_extension_type_is_not_unpickled(tmp_path):
    """pyarrow < 14.0.1 unpickled the metadata of `arrow.py_extension_type` fields on read
    (CVE-2023-47248): a recording carrying one must be read (or refused) without running it."""
    import pickle  # the attack payload, written here only

    import pyarrow as pa

    from netdiag.offline import format as fm
    from netdiag.offline import report as rp
    marker = tmp_path / "ran"
    field = pa.field("x", pa.int64(), metadata={b"ARROW:extension:name": b"arrow.py_extension_type",
                                                 b"ARROW:extension:metadata": pickle.dumps(_Marker(str(marker)))})
    evil = pa.table([pa.array([1])], schema=pa.schema([field], metadata={b"pandas": b'{"columns": 5}'}))
    blob = fm.header({"context": {"node": "x"}}) + fm.segment("intervals", evil) + fm.segment("evil", evil) + fm.commit()
    f = tmp_path / "evil.ndrec"
    f.write_bytes(blob)
    from netdiag.errors import BadInput
    with pytest.raises(BadInput):
        rp.Report([rp.load(f)])
    assert not marker.exists()


def test_pyarrow_is_not_the_one_that_unpickles():
    import pyarrow as pa
    major, minor, patch = (int(x) for x in re.findall(r"\d+", pa.__version__)[:3])
    assert (major, minor, patch) >= (14, 0, 1)
    text = (ROOT / "pyproject.toml").read_text()
    assert '"pyarrow>=14.0.1"' in text


def test_control_characters_from_a_file_never_reach_the_terminal(capsys):
    """An error quoting a file's key, and report's text tables, print control characters escaped:
    the error stays one line, and no escape sequence from the file reaches the terminal."""
    from netdiag import cli as climod
    from netdiag.errors import BadInput
    assert climod.printable("a\nb\x1b[2Jc\td\x9b") == "a\\nb\\x1b[2Jc\\td\\x9b"

    import click

    @click.command("boom")
    def boom():
        raise BadInput("f.ndrec: key 'x\n\x1b[31mred': bad")

    import pytest as _pytest
    mp = _pytest.MonkeyPatch()
    mp.setattr(climod.LazyGroup, "get_command", lambda self, ctx, name: boom)
    try:
        with _pytest.raises(SystemExit) as ei:
            climod.main(["boom"])
    finally:
        mp.undo()
    assert ei.value.code == 65
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err


def test_report_text_escapes_control_characters(tmp_path):
    import json

    from netdiag.commands.report import _CONTROL
    line = json.loads((GOLDEN / "healthy.ndjson").read_text().splitlines()[0])
    line["destinations"][0]["netns_name"] = "evil\x1b]0;pwned\x07"
    f = tmp_path / "e.ndjson"
    f.write_text(json.dumps(line) + "\n")
    from click.testing import CliRunner
    res = CliRunner().invoke(cli, ["report", str(f)])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output and "evil\\x1b]0;pwned\\x07" in res.output
    assert 0x0a not in _CONTROL
