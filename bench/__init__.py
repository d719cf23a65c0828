"""Micro-benchmarks run by ``coopr-pipeline bench``; each returns its figures as a dict."""

__all__: list[str] = []
