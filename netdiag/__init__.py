"""netdiag: eBPF tracing and diagnosis of TCP connection problems."""
__version__ = "0.1.0"
