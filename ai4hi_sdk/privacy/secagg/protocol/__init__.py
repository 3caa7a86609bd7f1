"""SecAgg+ protocol layer: pure state machines (no NVFlare).

* :mod:`.config` -- :class:`SecAggConfig` (k, t, timeouts, overflow guard).
* :mod:`.graph` -- the deterministic k-regular neighbour graph.
* :mod:`.messages` -- typed, canonical wire messages with replay/tamper checks.
* :mod:`.identity` -- signing with the provisioned site key, verification against the root CA.
* :mod:`.client` / :mod:`.server` -- the site and server state machines.
* :mod:`.payload` -- what the masked vector carries (weighted delta, weight, metric sums/counts).
"""
from .client import SecAggClient
from .config import SecAggConfig
from .graph import neighbour_graph
from .messages import ProtocolError
from .payload import DecodedSum, PayloadCodec
from .server import RoundAbandoned, SecAggRound

__all__ = ["SecAggClient", "SecAggConfig", "neighbour_graph", "ProtocolError", "PayloadCodec", "DecodedSum",
           "RoundAbandoned", "SecAggRound"]
