"""The dataset scan, in stages: :mod:`.config` (options, checked before any work) ->
:mod:`.loop` (batches through the network with taps) -> :mod:`.reducers` and :mod:`.state`
(maxima, exact top-k, statistics) -> :mod:`.workdir` (crash-safe checkpoints) ->
:mod:`.assemble` (the run file); :mod:`.distributed` splits a scan over torchrun ranks."""

from .config import ScanConfig
from .distributed import merge
from .loop import reduce_images, scan, scan_shard

__all__ = ["scan", "scan_shard", "ScanConfig", "merge", "reduce_images"]
