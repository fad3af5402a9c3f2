"""Setpoint's benchmark: reaction, throughput, scheduler scale and round trips, each against a ceiling measured in
the same run (the same work with no Setpoint code) or a naive peer.

Run `python -m bench --quick` (about two minutes) or `python -m bench` (about 17 minutes) from the repository
root; the figures land in bench/results/ (results.md, results.png, results.json).
"""
