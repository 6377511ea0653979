"""Reading run files: the schema (:mod:`.format`), format-checked access (:mod:`.reader`) and
pandas tables (:mod:`.tables`). Nothing here imports torch."""

from ..lazy import submodules_on_first_use
from .reader import RunReader, open_run
from .tables import (
    channel_histogram,
    channel_maxima,
    channel_quantiles,
    channel_stats,
    class_table,
    failures,
    read_patches,
    run_layers,
    similar_channels,
    top_patches,
)

__all__ = ["RunReader", "open_run", "top_patches", "channel_maxima", "channel_stats", "run_layers",
           "read_patches", "failures", "class_table", "channel_quantiles", "channel_histogram",
           "similar_channels"]

__getattr__ = submodules_on_first_use(__name__)  # cnnviz.run.<module> as the docs write it
