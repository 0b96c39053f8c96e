"""Benchmarks (`python -m benchmarks.<name>`), each writing JSON + PNG under bench-results/."""
