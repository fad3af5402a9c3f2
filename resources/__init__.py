"""Desired state as documents `{kind, name, spec}`: what the CLI and the REST API read and write.

Both surfaces go through here, so a change made by one (or by SQL) shows in the others at once.
"""
