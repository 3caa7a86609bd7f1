"""ai4hi_sdk: federated training and clinical validation of radiology AI on NVIDIA FLARE.

Pure cores (DICOM indexing, metrics, privacy primitives) live apart from the thin NVFlare
adapters (``ai4hi_sdk.jobs``, ``ai4hi_sdk.trainers.site_trainer``) that wire them in.
"""

__version__ = "0.1.0"
