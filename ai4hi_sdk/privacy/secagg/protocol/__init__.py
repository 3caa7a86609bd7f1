"""SecAgg+ protocol layer (pure state machines). Work in progress: config and graph so far."""
from .config import SecAggConfig
from .graph import neighbour_graph

__all__ = ["SecAggConfig", "neighbour_graph"]
