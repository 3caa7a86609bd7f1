"""SecAgg+ protocol layer against an active server: pure state machines (no NVFlare).

* :mod:`.config` -- :class:`SecAggConfig`, the one configuration of a job's secure aggregation (k,
  requested t, clip, weight bound, masked metrics, cipher, timeout, overflow guard); translated from
  the job spec by :func:`ai4hi_sdk.privacy.secagg.settings.protocol_config`.
* :mod:`.policy` -- :class:`SitePolicy`: the site's minimum cohort and threshold floor.
* :mod:`.graph` -- the deterministic k-regular neighbour graph.
* :mod:`.messages` -- typed, canonical wire messages with replay/tamper checks.
* :mod:`.identity` -- signing with the provisioned site key, verification against the root CA,
  refusal of server, admin and CA certificates.
* :mod:`.client` / :mod:`.server` -- the site and server state machines (advertise, share keys,
  masked input, consistency check, unmask).
* :mod:`.payload` -- what the masked vector carries (weighted delta, weight, metric sums/counts)
  and the public bounds an unmasked sum must satisfy.
"""
from .client import RoundRecord, SecAggClient
from .config import SecAggConfig
from .graph import neighbour_graph
from .messages import ProtocolError
from .payload import DecodedSum, PayloadCodec
from .policy import SitePolicy
from .server import RoundAbandoned, SecAggRound

__all__ = ["SecAggClient", "RoundRecord", "SecAggConfig", "SitePolicy", "neighbour_graph", "ProtocolError",
           "PayloadCodec", "DecodedSum", "RoundAbandoned", "SecAggRound"]
