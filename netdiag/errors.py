"""Typed errors raised by the library; only the CLI turns them into messages and exit codes."""
from __future__ import annotations

import errno
import os

# Exit codes (sysexits.h where one fits). Documented in docs/commands/*.md.
EXIT_USAGE = 2          # click's own usage errors
EXIT_DATAERR = 65       # corrupt input (recording, format file)
EXIT_UNAVAILABLE = 69   # a kernel feature the request needs is absent
EXIT_CANTCREAT = 73     # an output file cannot be created or written (exists, unwritable, disk full)
EXIT_SOFTWARE = 70      # BPF compile/verifier/attach failure
EXIT_NOPERM = 77        # not root / missing CAP_BPF+CAP_PERFMON
EXIT_CONFIG = 78        # set-up incomplete (bcc not importable)


# bind() refusals that name the address asked for: bad input (65) wherever netdiag listens
# (`watch --metrics`, `load server`), with these words
BIND_REFUSALS = {errno.EADDRINUSE: "the port is in use", errno.EADDRNOTAVAIL: "the address is not on this host",
                 errno.EACCES: "permission denied"}


class NetdiagError(Exception):
    exit_code = EXIT_SOFTWARE

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail   # long text (a verifier log), shown with -v


class NotPrivileged(NetdiagError):
    exit_code = EXIT_NOPERM


class BccMissing(NetdiagError):
    exit_code = EXIT_CONFIG


class ExtraMissing(NetdiagError):
    """A command's optional Python packages are not installed (pip install 'netdiag[report]')."""
    exit_code = EXIT_CONFIG


class FeatureMissing(NetdiagError):
    """A kernel feature is absent. ``feature`` names it (e.g. "kprobes")."""
    exit_code = EXIT_UNAVAILABLE

    def __init__(self, feature: str, message: str, detail: str | None = None):
        super().__init__(message, detail)
        self.feature = feature


class BpfLoadError(NetdiagError):
    exit_code = EXIT_SOFTWARE


class BadInput(NetdiagError):
    exit_code = EXIT_DATAERR


class OutputError(NetdiagError):
    """An output file (a recording, a report) cannot be created or written."""
    exit_code = EXIT_CANTCREAT


class BpfSyscallError(NetdiagError, OSError):
    """A bpf() command (or the perf_event_open() that attaches a tracepoint) the kernel refused.
    ``command`` names it ("BPF_PROG_LOAD"), ``errno`` is the kernel's; an OSError too, so
    callers that fall back on any refusal keep doing so."""
    exit_code = EXIT_SOFTWARE

    def __init__(self, command: str, err: int, what: str = "", detail: str | None = None):
        name = errno.errorcode.get(err, f"E{err}")
        message = f"{what + ': ' if what else ''}{command} refused ({name}: {os.strerror(err)})"
        NetdiagError.__init__(self, message, detail)
        OSError.__init__(self, err, message)
        self.command = command
        self.message = message

    def __str__(self) -> str:
        return self.message
