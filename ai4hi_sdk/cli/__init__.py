"""The ``ai4hi`` command: one module per command group (data, job, ...)."""
