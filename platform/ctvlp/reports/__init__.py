"""ctvlp.reports"""
