# Entry script shipped in every ai4hi validation/monitoring job's custom/ folder; the SDK is installed at the site.
import os

from ai4hi_sdk.jobs.validation_site_main import main

main(os.path.dirname(os.path.abspath(__file__)))
