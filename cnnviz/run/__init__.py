"""Reading run files: the schema (:mod:`.format`), format-checked access (:mod:`.reader`) and
pandas tables (:mod:`.tables`). Nothing here imports torch."""

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


def __getattr__(name: str):
    """Modules the docs name (``cnnviz.run.masks``) load on first use, without an import."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
