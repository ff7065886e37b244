"""Channel pruning: per-op channel rules and groups (`depgraph`), selection criteria
(`select`), least squares (`lstsq`), the driver (`prune`), auto-mode units (`units`) and
the scheme (`scheme`)."""
from .scheme import CHANNEL_PRUNING, ChannelPruning  # noqa: F401
