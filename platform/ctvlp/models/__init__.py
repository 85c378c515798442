"""ctvlp.models"""
