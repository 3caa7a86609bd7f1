"""ai4hi_sdk.validation"""
