"""Sign-in back-off: an address that gives a wrong token too often is refused for a while, so the token cannot be
guessed at the speed of the network.

Per process and in memory, bounded: at most MAX_ADDRESSES addresses are tracked (the oldest forgotten first), each
with its failures in the current window. Refusals are logged at most once per address per window.
"""

from __future__ import annotations

import dataclasses
import logging
import math

log = logging.getLogger("setpoint.console")

MAX_FAILURES = 10
WINDOW_S = 60.0
MAX_ADDRESSES = 10_000


@dataclasses.dataclass
class _Failures:
    since: float
    count: int = 0
    logged: bool = False


class SignInLimit:
    """MAX_FAILURES wrong tokens per WINDOW_S per client address; then every sign-in from it waits for the window."""

    def __init__(self) -> None:
        self.seen: dict[str, _Failures] = {}

    def _current(self, address: str, now: float) -> _Failures | None:
        failures = self.seen.get(address)
        if failures is not None and now - failures.since >= WINDOW_S:
            del self.seen[address]
            return None
        return failures

    def retry_after_s(self, address: str, now: float) -> int | None:
        """Seconds `address` must wait before trying again, or None if it may try now (a refusal is logged once)."""
        failures = self._current(address, now)
        if failures is None or failures.count < MAX_FAILURES:
            return None
        if not failures.logged:
            failures.logged = True
            log.warning("console sign-in backed off", extra={"client": address, "failures": failures.count})
        return max(1, math.ceil(failures.since + WINDOW_S - now))

    def failed(self, address: str, now: float) -> None:
        failures = self._current(address, now)
        if failures is None:
            if len(self.seen) >= MAX_ADDRESSES:
                del self.seen[next(iter(self.seen))]
            failures = self.seen[address] = _Failures(now)
        failures.count += 1
