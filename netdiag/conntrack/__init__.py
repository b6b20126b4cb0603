"""Conntrack and SNAT visibility over ctnetlink (see monitor.ConntrackMonitor)."""
from .monitor import ConntrackMonitor, ConntrackUnavailable

__all__ = ["ConntrackMonitor", "ConntrackUnavailable"]
