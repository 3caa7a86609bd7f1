"""ai4hi_sdk.provision"""
