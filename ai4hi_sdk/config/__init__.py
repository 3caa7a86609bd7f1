"""ai4hi_sdk.config"""
