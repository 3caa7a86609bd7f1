"""Secure aggregation (SecAgg+-style pairwise masking with dropout recovery, active-server variant).

Layers: :mod:`.primitives` (pure crypto, quantisation, encoding) | :mod:`.protocol` (pure client
and server state machines, no NVFlare) | NVFlare glue (``ai4hi_sdk.jobs.components.secagg_*``).
"""
