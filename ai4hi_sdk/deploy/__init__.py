"""Running a provisioned consortium: kit inspection, site processes, readiness, and the lead's
admin session (submit, follow, download jobs).

Small modules, one job each:

* :mod:`.kit` — what a kit is (server, site or admin), its certificates and configuration;
* :mod:`.processes` — start and stop a kit's NVFlare processes without prompts or leftovers;
* :mod:`.readiness` — the site admin's readiness report (``ai4hi site check``);
* :mod:`.admin` — the lead's admin session (submit, status, wait, list, abort);
* :mod:`.results` — a finished job's server workspace -> the ``result/`` layout ``simulate`` writes.
"""
