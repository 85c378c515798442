"""ctvlp.losses"""
