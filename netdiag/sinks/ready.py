"""Ready files: written whole or not at all (a waiter polls for the file and reads it as soon as it
exists), through one helper; ``ReadyFile`` is the sink that writes one when the probes are attached."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_ready(path, info: dict) -> None:
    """``info`` as one JSON line in ``path``: a temporary file in the same directory, then
    ``os.replace`` (atomic on one file system)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(info) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ReadyFile:
    def __init__(self, path):
        self.path = path

    def open(self, info: dict) -> None:
        write_ready(self.path, info)

    def interval(self, record: dict) -> None:
        pass

    def close(self, summary: dict | None) -> None:
        pass
