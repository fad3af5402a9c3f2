"""The kinds that ship with Setpoint; each depends on the contract in worker.controller, never the reverse."""
