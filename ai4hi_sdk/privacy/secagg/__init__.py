"""Secure aggregation (SecAgg+-style pairwise masking with dropout recovery).

Layers: :mod:`.primitives` (pure crypto, quantisation, encoding; no NVFlare) | protocol state
machines | NVFlare glue. Only the primitives exist so far.
"""
