"""ai4hi_sdk.trainers"""
