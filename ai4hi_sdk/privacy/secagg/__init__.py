"""Secure aggregation (SecAgg+-style pairwise masking with dropout recovery, active-server variant).

Layers: :mod:`.primitives` (pure crypto, quantisation, encoding) | :mod:`.protocol` (pure client
and server state machines, no NVFlare) | :mod:`.settings` (the job's settings and the site's
policy into the protocol's configuration, policy and payload codec) | NVFlare glue
(``ai4hi_sdk.jobs.components.secagg_server``, ``ai4hi_sdk.site.secagg_client``).
"""
