"""Conntrack and SNAT visibility over ctnetlink (see monitor.ConntrackMonitor)."""
from netdiag.sources.conntrack.monitor import ConntrackMonitor, ConntrackUnavailable

__all__ = ["ConntrackMonitor", "ConntrackUnavailable"]
