"""What a rollout holds back, marked for people to read: phase Held, with a condition naming the policy and why.

Marked after the claim has committed, in a transaction of its own, and bounded per claim (models/policy.py's
setpoint_hold does it, as its owner): it is for people and must never slow or fail a claim.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import Engine, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from scheduler.policies import Plan

log = logging.getLogger(__name__)

_HOLD = text("SELECT setpoint_hold(:holds, CAST(:kinds AS text[]), CAST(:names AS text[]), :most)").bindparams(
    bindparam("holds", type_=JSONB)
)
HELD_PER_CLAIM = 500
"""How many waiting changes one claim marks Held at most (the rest at the next ones): marking is for people to
read, and must not make a claim slow (5,000 at once took 1.4 s)."""


def holds(plan: Plan | None) -> list[dict[str, str]]:
    """The policies whose rollout is full or halted, with the reason and message their held resources show."""
    if plan is None:
        return []
    return [
        {"name": b.name, "reason": b.reason, "message": b.message}
        for b in plan.budgets.values()
        if b.rollouts is not None and b.rollouts <= 0
    ]


def mark_held(engine: Engine, held: list[dict[str, str]], released: list[tuple[str, str]]) -> None:
    """After the claim committed, in a transaction of its own: mark Held (up to HELD_PER_CLAIM) the due changes that a
    full or halted rollout keeps waiting; the `released` ones, held until this claim, are Pending again."""
    if not held and not released:
        return
    kinds, names = [k for k, _ in released], [n for _, n in released]
    try:
        with engine.begin() as conn:
            conn.execute(_HOLD, {"holds": held, "kinds": kinds, "names": names, "most": HELD_PER_CLAIM})
    except DBAPIError as error:  # what people read, not what runs: the claim's messages must still be sent
        log.warning("could not mark what the rollouts hold back (next claim tries again): %s", error.orig)
