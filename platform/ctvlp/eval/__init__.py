"""ctvlp.eval"""
