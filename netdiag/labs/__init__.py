"""Labs: the incidents of the seeds, reproduced in throw-away network namespaces with netdiag
watching, so every verdict is produced for real (`netdiag lab <scenario>`)."""
from netdiag.labs.runner import LabRunner, cleanup, lab_leftovers, restore_sysctls
from netdiag.labs.scenarios import SCENARIOS

__all__ = ["LabRunner", "SCENARIOS", "cleanup", "lab_leftovers", "restore_sysctls"]
