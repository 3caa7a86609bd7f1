"""Task kinds as strategies: one module per kind (classification, segmentation, pretrain), looked up
by the job spec's ``task`` in :mod:`ai4hi_sdk.tasks.registry`; the common interface is
:class:`ai4hi_sdk.tasks.base.TaskStrategy`. Pure cores: no NVFlare."""
