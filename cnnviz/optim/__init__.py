"""Feature visualization by optimization: objectives, parameterizations, transforms, the
gradient-ascent loops (:mod:`.ascent`) and what they produce as images (:mod:`.images`)."""

from . import objectives
from .ascent import RenderResult, cs231n_class_visualization, render
from .images import class_probabilities, save_png, store_in_run, to_uint8

__all__ = ["objectives", "RenderResult", "render", "cs231n_class_visualization", "save_png",
           "to_uint8", "class_probabilities", "store_in_run"]


def __getattr__(name: str):
    """Modules the docs name (``cnnviz.optim.threads``) load on first use, without an import."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
