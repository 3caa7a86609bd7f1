"""ai4hi_sdk.jobs"""
