"""Benchmarks: servletsession side by side with what users would pick instead (see README)."""
