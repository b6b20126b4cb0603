"""Labs: the incidents of the seeds, reproduced in throw-away network namespaces with netdiag
watching, so every verdict is produced for real (`netdiag lab <scenario>`)."""
from .runner import LabRunner, cleanup, lab_leftovers
from .scenarios import SCENARIOS

__all__ = ["LabRunner", "SCENARIOS", "cleanup", "lab_leftovers"]
