"""netdiag's load generator: a server that holds, echoes or answers HTTP, and a client that opens,
holds, churns or bursts TCP connections, so every verdict can be reproduced on demand.

The library raises typed errors (netdiag.errors); ``netdiag load`` turns them into messages.
"""
from netdiag.load.client import ClientConfig, run_client
from netdiag.load.server import Server, ServerConfig

__all__ = ["ClientConfig", "run_client", "Server", "ServerConfig"]
