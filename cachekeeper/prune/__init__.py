"""``prune``: plan which artifacts to delete, then delete them without ever leaving a lie behind.

Policies choose what goes; roots say what never goes:

- scope: ``layer``, ``model`` and ``keys`` narrow what is considered;
- criteria, all of which an artifact must meet to be removed: ``older_than`` (not used for that
  long), ``stale`` (no target derives its key), ``keep_last`` (not among the N most recently used
  of its model and layer; also a floor that ``max_size`` respects);
- budget: ``max_size`` evicts the least recently used until the artifacts in scope fit;
- roots, which every policy respects: pinned keys, keys a running process uses (or builds), the
  keys a live snapshot was built from, and the weights revision a target names.

The plan says why each artifact goes or stays. Each removal then holds the key's build lease (no
builder starts on it meanwhile) and goes: claim the manifest row and mark it ``deleting`` (one
prune per artifact, also across machines sharing a PostgreSQL manifest) → remove the sidecar (no
boot trusts the artifact from here on) → look for uses a last time, and if a boot started using it
meanwhile, put the sidecar back and keep it → remove the files → forget the row. A prune killed at
any step leaves a row marked ``deleting`` that the next prune finishes once nothing uses it, and
never a sidecar without its files. A key rebuilt since the plan was made is a new artifact and is
left alone. Snapshots go before what they were built from. Every prune also clears what killed
processes left behind.

The package: ``policy`` (what was asked), ``plan`` (what goes and why), ``execute`` (removing it).
"""

from .execute import PruneResult, execute_prune
from .plan import PrunePlan, blockers, plan_prune
from .policy import PrunePolicy

__all__ = ["PrunePlan", "PrunePolicy", "PruneResult", "blockers", "execute_prune", "plan_prune"]
