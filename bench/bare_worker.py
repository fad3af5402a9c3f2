"""`celery -A bench.bare_worker worker`: the bare task's worker, configured from the same SETPOINT_* variables."""

from bench.bare import make_app
from setpoint import settings as config

app = make_app(config.get())
