"""ctvlp.synthetic"""
