"""ai4hi_sdk.privacy"""
