# Entry script shipped in every ai4hi job's custom/ folder; the SDK itself is installed at the site.
import os

from ai4hi_sdk.jobs.site_main import main

main(os.path.dirname(os.path.abspath(__file__)))
