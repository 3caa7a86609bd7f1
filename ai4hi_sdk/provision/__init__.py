"""Consortium provisioning: NVFlare kits overlaid with the SDK's site configuration."""
