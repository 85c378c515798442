"""ctvlp.tasks"""
