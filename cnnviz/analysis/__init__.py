"""Questions asked of finished runs: :mod:`.explain` (where do new images stand against a
scanned library?) and :mod:`.compare` (what changed between two runs?)."""

from .compare import compare_runs
from .explain import explain

__all__ = ["explain", "compare_runs"]
