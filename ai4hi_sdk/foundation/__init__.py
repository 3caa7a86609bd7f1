"""Foundation models: a backbone pretrained (or imported), then adapted with few labels.

Modules, one job each (import them directly; nothing heavy is imported here):

* :mod:`~ai4hi_sdk.foundation.presets`       - named backbone architectures (pure data)
* :mod:`~ai4hi_sdk.foundation.architectures` - backbones (MONAI ViT / ResNet), classifier, UNETR, layouts
* :mod:`~ai4hi_sdk.foundation.lora`          - LoRA / FFA-LoRA layers for Linear and Conv{1,2,3}d, merge
* :mod:`~ai4hi_sdk.foundation.adaptation`    - linear_probe / lora / ffa_lora / partial / full -> trainable names
* :mod:`~ai4hi_sdk.foundation.mae`           - masked-autoencoder model, per-sample loss, encoder extraction
* :mod:`~ai4hi_sdk.foundation.batchnorm`     - a checkpoint's BatchNorm kept frozen in eval mode
* :mod:`~ai4hi_sdk.foundation.checkpoint`    - import (safetensors / weights_only .pt), save, load + sha256
* :mod:`~ai4hi_sdk.foundation.provenance`    - pretrained backbone card and export
* :mod:`~ai4hi_sdk.foundation.datasets`      - every image of a modality at a site (labelled or not)
* :mod:`~ai4hi_sdk.foundation.trainers`      - MAE pretraining and backbone classification trainers
* :mod:`~ai4hi_sdk.foundation.text`          - byte tokenizer (no vocabulary) and small text encoder
* :mod:`~ai4hi_sdk.foundation.contrastive`   - image-report model, symmetric InfoNCE, zero-shot prompts, export
* :mod:`~ai4hi_sdk.foundation.report_pairs`  - a site's train-split images paired with their study's report
* :mod:`~ai4hi_sdk.foundation.image_report`  - ``ImageReportTrainer`` (client-level DP + secure aggregation only)
"""
