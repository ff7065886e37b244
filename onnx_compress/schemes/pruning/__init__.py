"""Channel pruning: per-op channel rules (`ops` and `ops_*`: propagate and shrink side by
side, `register_op`), channel groups (`group`, `channels`, `shapevals`), removing channels
(`winnow`; `depgraph` is their facade), selection criteria (`select`), least squares
(`lstsq`), the driver (`prune`), auto-mode units (`units`) and the scheme (`scheme`)."""
from .scheme import CHANNEL_PRUNING, ChannelPruning

__all__ = ["CHANNEL_PRUNING", "ChannelPruning"]
