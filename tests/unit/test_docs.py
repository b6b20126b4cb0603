"""Docs that cannot drift: every command and subcommand of the click group has its page under
docs/commands/, and the page's synopsis and option tables name exactly the options its --help has.

Conventions the pages follow (docs/contracts.md points here):

* ``docs/commands/<command>.md`` documents the command and all its subcommands.
* The page's first fenced code block is the synopsis: one entry per command path, starting
  ``netdiag <command> [<subcommand>]``, continued on indented lines.
* Option tables live in sections whose heading ends in "options": ``## Options`` for the command,
  ``## <Subcommand> options`` for a subcommand; the options are the ``--long`` tokens of each
  row's first cell.
* Commands that load BPF have ``## OVERHEAD`` and ``## CAVEATS`` sections.
"""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from netdiag.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "commands"
# commands that load BPF programs (directly, or through the watch collector a lab runs)
BPF_COMMANDS = {"doctor", "trace", "watch", "conntrack", "lab"}
LONG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")


def command_paths():
    """Every command path under the group: ('trace',), ('load',), ('load', 'client'), …"""
    ctx = click.Context(cli)
    out = []

    def walk(cmd, path):
        out.append(path)
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), path + (name,))

    for name in cli.list_commands(ctx):
        walk(cli.get_command(ctx, name), (name,))
    return out


def command(path):
    ctx = click.Context(cli)
    cmd = cli
    for name in path:
        cmd = cmd.get_command(ctx, name)
    return cmd


def help_options(cmd) -> set:
    """The options --help shows: each option's long name (its short one when it has no long one)."""
    ctx = click.Context(cmd)
    opts = set()
    for p in cmd.get_params(ctx):
        if not isinstance(p, click.Option) or p.hidden:
            continue
        names = [o for o in p.opts + p.secondary_opts if o.startswith("--")]
        opts.update(names or p.opts[:1])
    return opts


def page(path) -> str:
    f = DOCS / f"{path[0]}.md"
    assert f.is_file(), f"docs/commands/{path[0]}.md missing for `netdiag {' '.join(path)}`"
    return f.read_text()


def synopsis(text: str) -> dict:
    """First fenced code block: {('load', 'client'): {'--port', …}, …}."""
    m = re.search(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    assert m, "no synopsis code block"
    entries: dict = {}
    current = None
    for line in m.group(1).splitlines():
        if line.startswith("netdiag "):
            words = []
            for w in line.split()[1:]:
                if not re.fullmatch(r"[a-z][a-z0-9-]*", w):
                    break
                words.append(w)
            current = tuple(words)
            entries.setdefault(current, set())
        elif not line.strip() or not line[0].isspace():
            current = None
            continue
        if current is not None:
            entries[current].update(LONG.findall(line))
    return entries


def sections(text: str):
    """(heading, body) of every ## / ### section."""
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    return [(parts[i].lstrip("#").strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def table_options(text: str, path) -> set:
    """--long tokens of the first cells of table rows in the path's options section(s)."""
    want = "options" if len(path) == 1 else f"{path[-1]} options"
    found = set()
    for heading, body in sections(text):
        if heading.replace("`", "").strip().lower() != want:
            continue
        for line in body.splitlines():
            if line.startswith("|") and not re.match(r"^\|[\s:-]*\|", line):
                first = line.split("|")[1]
                found.update(LONG.findall(first))
    return found


def entry(text, path):
    syn = synopsis(text)
    # the entry naming exactly this path (a group's page lists each subcommand on its own)
    return syn.get(tuple(path))


PATHS = command_paths()


def ids(path):
    return " ".join(path)


def test_every_command_is_found():
    names = {p[0] for p in PATHS}
    assert {"doctor", "trace", "watch", "conntrack", "lab", "load"} <= names
    assert ("load", "server") in PATHS and ("load", "client") in PATHS and ("lab", "list") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=ids)
def test_page_exists_with_overhead_and_caveats(path):
    text = page(path)
    if path[0] in BPF_COMMANDS:
        heads = [h for h, _ in sections(text)]
        assert "OVERHEAD" in heads and "CAVEATS" in heads, f"docs/commands/{path[0]}.md: OVERHEAD/CAVEATS"


@pytest.mark.parametrize("path", [p for p in PATHS if not isinstance(command(p), click.Group)], ids=ids)
def test_page_names_exactly_the_options_of_help(path):
    text = page(path)
    cmd = command(path)
    syn = entry(text, path)
    assert syn is not None, f"docs/commands/{path[0]}.md: the synopsis has no `netdiag {ids(path)}` line"
    documented = syn | table_options(text, path)
    real = help_options(cmd)
    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0, res.output
    for opt in real:
        assert opt in res.output, f"{opt} not in `netdiag {ids(path)} --help`"
    missing = sorted(real - documented - {"--help"})
    unknown = sorted(documented - real - {"--help"})
    assert not missing, f"docs/commands/{path[0]}.md does not name {missing} of `netdiag {ids(path)}`"
    assert not unknown, f"docs/commands/{path[0]}.md names {unknown}, which `netdiag {ids(path)}` does not have"


@pytest.mark.parametrize("path", [p for p in PATHS if isinstance(command(p), click.Group)], ids=ids)
def test_group_page_lists_every_subcommand(path):
    syn = synopsis(page(path))
    ctx = click.Context(cli)
    for name in command(path).list_commands(ctx):
        assert tuple(path) + (name,) in syn, f"docs/commands/{path[0]}.md: no `netdiag {ids(path)} {name}` line"


def test_contracts_page_names_every_field_of_the_watch_schema():
    import json
    schema = json.loads((ROOT / "docs" / "schema" / "watch-interval.schema.json").read_text())
    text = (ROOT / "docs" / "contracts.md").read_text()
    objects = [schema, schema["properties"]["node_totals"], *schema["$defs"].values()]
    fields = {k for o in objects for k in o.get("properties", {})}
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert not missing, f"docs/contracts.md does not describe {missing} of the watch interval schema"


def test_contracts_are_linked():
    for doc in ("README.md", "docs/architecture.md"):
        assert "contracts.md" in (ROOT / doc).read_text(), f"{doc} does not link docs/contracts.md"
