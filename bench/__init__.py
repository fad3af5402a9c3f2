"""Setpoint's benchmark: reaction, throughput, scheduler scale and round trips, side by side with the naive peers.

Run `python -m bench --quick` (under a minute) or `python -m bench` (a few minutes) from the repository root;
the figures land in bench/results/ (results.md, results.png, results.json).
"""
