"""Flags and helpers shared by several commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

WEIGHTS_HELP = ("DEFAULT or a torchvision weights name (IMAGENET1K_V2...), a local state_dict "
                "or training checkpoint file (never unpickled), or 'none' for random weights "
                "(default: DEFAULT)")


def add_model_args(p: argparse.ArgumentParser, default: str | None = None, required: bool = True) -> None:
    p.add_argument("--model", required=required and default is None, default=default,
                   help="torchvision model name (resnet50, squeezenet1_1...) or efficientnet_lite0"
                   + (f" (default: {default})" if default else ""))
    p.add_argument("--weights", default="DEFAULT", help=WEIGHTS_HELP)


def add_device_arg(p: argparse.ArgumentParser, what: str = "the model") -> None:
    p.add_argument("--device", default="cpu", help=f"where {what} runs: cpu, cuda, cuda:1... (default: cpu)")


def add_progress_arg(p: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    p.add_argument("--no-progress", action="store_true", help=help)


RUN_WEIGHTS_HELP = "with --model: " + WEIGHTS_HELP


def load(args):
    from ..model.loading import load_model

    return load_model(args.model, args.weights or "DEFAULT", device=getattr(args, "device", "cpu"))


def run_model(args):
    """The model ``--model`` and ``--weights`` name for a command that reads a run, or ``None``
    (the run's own, reloaded when needed). ``--weights`` alone would be ignored: refused."""
    from ..errors import UsageError

    if args.model:
        return load(args)
    if args.weights is not None:
        raise UsageError("`weights` goes with `model`: name the run's model too (--model NAME --weights "
                         "FILE), or leave both out to reload the run's own")
    return None


def channel_list(spec: str, what: str = "channels", n_channels: int = 1 << 17) -> list[int]:
    from ..channels import parse_channels

    return parse_channels(spec, n_channels, what=what)


def use_agg() -> None:
    """Figures are written to files: no display needed (a library never switches backends;
    the command line does)."""
    import matplotlib

    matplotlib.use("Agg")


def check_out(out: str, file: bool) -> None:
    """Refuse an ``--out`` that cannot be written, before the work that fills it: ``file``, an
    output file (its folder is created when missing); else a folder of outputs."""
    from ..errors import UsageError

    path = Path(out)
    if file and path.is_dir():
        raise UsageError(f"`out` {out} is a folder; name the file to write")
    if not file and path.exists() and not path.is_dir():
        raise UsageError(f"`out` {out} is a file; name a folder to write the images in (or a .png "
                         "file for one grid)")
    folder = path.parent if file else path
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"`out` {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"`out` {out}: {existing} cannot be written here (permissions, or a read-only "
                         "filesystem); choose another place")
