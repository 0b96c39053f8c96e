"""Benchmark tools of the field (guidellm, inference-perf, aiperf) against llmstream.

Modules: `tools` (each tool's command line and report reader), `runner` (one bounded run),
`stack` (the servers under test), `echo` + `capture` (what each tool sends, and our servers'
answer to it), `report` (tables and the PNG). Entry point: `python -m benchmarks.peers`.
"""
