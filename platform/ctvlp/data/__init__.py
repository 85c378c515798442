"""ctvlp.data"""
