"""The site-owned runtime: what runs inside a hospital's NVFlare site for any ai4hi job.

Installed with the SDK at the site, never shipped by a job: the executor (:mod:`.executor`), the
runtime that applies the site's policy (:mod:`.runtime`, :mod:`.gate`), the egress guard
(:mod:`.egress_guard`, :mod:`.egress_rules`), the secure-aggregation client (:mod:`.secagg_client`),
validation and monitoring at the site (:mod:`.validation`), job code by hash (:mod:`.code_bundle`)
and the identity of the site's data (:mod:`.dataset_identity`).
"""
