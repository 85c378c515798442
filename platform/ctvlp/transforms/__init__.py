"""ctvlp.transforms"""
