"""Flags and helpers shared by several commands."""

from __future__ import annotations

import argparse

WEIGHTS_HELP = ("DEFAULT or a torchvision weights name (IMAGENET1K_V2...), a local state_dict "
                "file, or 'none' for random weights (default: DEFAULT)")


def add_model_args(p: argparse.ArgumentParser, default: str | None = None, required: bool = True) -> None:
    p.add_argument("--model", required=required and default is None, default=default,
                   help="torchvision model name (resnet50, squeezenet1_1...) or efficientnet_lite0"
                   + (f" (default: {default})" if default else ""))
    p.add_argument("--weights", default="DEFAULT", help=WEIGHTS_HELP)


def add_device_arg(p: argparse.ArgumentParser, what: str = "the model") -> None:
    p.add_argument("--device", default="cpu", help=f"where {what} runs: cpu, cuda, cuda:1... (default: cpu)")


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def load(args):
    from ..model.loading import load_model
    from ..scanner.config import check_device

    device = getattr(args, "device", "cpu")
    check_device(device)  # before the weights load: `--device cuda` on a machine without one
    return load_model(args.model, args.weights, device=device)


def channel_list(spec: str, what: str = "channels", n_channels: int = 1 << 30) -> list[int]:
    from ..viz.channels import parse_channels

    return parse_channels(spec, n_channels, what=what)


def use_agg() -> None:
    """Figures are written to files: no display needed (a library never switches backends;
    the command line does)."""
    import matplotlib

    matplotlib.use("Agg")
