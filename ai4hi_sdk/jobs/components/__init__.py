"""NVFlare adapters (controller, filters) that wire the SDK's pure cores into a job."""
