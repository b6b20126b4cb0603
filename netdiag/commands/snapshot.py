"""`netdiag snapshot`: the node's connection state now, in one file `netdiag report` reads."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("snapshot")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The snapshot file (0600, its directory made 0700); an existing file is never overwritten.")
@click.option("--node", metavar="NAME", help="The node name stored in the snapshot (default: the host name).")
@click.option("--no-nat", "nat", flag_value=False, default=True,
              help="Leave out the NAT rules (they are read with nft in every namespace).")
def command(out, node, nat):
    """Write the node's connection state now into one file.

    Per network namespace: TCP sockets by state and listeners with their queue and backlog
    (inet_diag), the TCP MIB and netstat counters, the conntrack count, max and per-CPU
    statistics, the sysctls that bound connections, and the NAT rules with their port ranges;
    with `netdiag doctor`'s table. `netdiag report FILE` shows it. Loads no BPF.

    \b
    Examples:
      sudo netdiag snapshot --out /var/lib/netdiag/node-$(date +%s).ndsnap
      netdiag report /var/lib/netdiag/node-1714533120.ndsnap
    """
    from netdiag.inputs import check_name, check_output_file
    from netdiag.kernel.features import require_privileges
    from netdiag.offline import snapshot
    if node is not None:
        check_name(node, "--node")
    check_output_file(out, "--out")         # before the node is read (nft runs in every namespace)
    require_privileges()
    meta, tables = snapshot.take(node, nat=nat)
    size = snapshot.write(out, meta, tables)
    s = meta["snapshot"]
    click.echo(f"netdiag: snapshot of {s['node']}: {s['namespaces']} namespace(s), "
               f"{tables['sockets'].num_rows} socket-state rows, {tables['listeners'].num_rows} listener(s), "
               f"{size} bytes to {out}", err=True)
