"""Benchmarks run by `make bench`: each section measures segshards and its baseline side by side."""
