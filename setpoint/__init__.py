"""Setpoint: the command line, configuration and zero-setup mode around the engine."""
