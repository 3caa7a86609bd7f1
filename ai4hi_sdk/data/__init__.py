"""ai4hi_sdk.data"""
