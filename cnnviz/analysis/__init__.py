"""Questions asked of finished runs: :mod:`.explanation` (where do new images stand against a
scanned library? runs the run's model), :mod:`.relevance` (which channels a prediction rests
on), :mod:`.attribution` (Captum's neuron attributions of a run's top units), :mod:`.unitmaps`
(a layer's maps recomputed for some of a run's images) and :mod:`.compare` (what changed
between two runs? reads the two files only; no torch)."""

from __future__ import annotations

from ..lazy import submodules_on_first_use
from .compare import compare_runs

__all__ = ["explain", "compare_runs"]


__getattr__ = submodules_on_first_use(__name__, {"explain": (".explanation", "explain")})
