"""Fairness between scopes in a claim with policies: which due resources are worth considering, and in what order.

A scope here is a group: a kind and the policies whose scope a resource of it is in. The claim reads windows of due
resources in due order, round-robins between the groups it found (the first due of each, then the second, ...), and
reads on past a group that fills a window, so that a backlog of one (100,000 due, or held to max_in_flight 1) hides
no other behind it.
"""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from models.policy import in_scope, to_start

if TYPE_CHECKING:
    from scheduler.policies import Budget

_ROLLOUT = to_start("s")
_CANDIDATES = """
SELECT f.kind, f.name, f.next_reconcile_at, f.rollout, m.policies
FROM (SELECT s.kind, s.name, s.next_reconcile_at, s.labels, {rollout} AS rollout
      FROM statuses AS s
      WHERE s.next_reconcile_at <= now() AND s.next_reconcile_at >= :after AND s.enqueued_at IS NULL {excluded}
      ORDER BY s.next_reconcile_at LIMIT :window) AS f
CROSS JOIN LATERAL (SELECT COALESCE(array_agg(p.name::text ORDER BY p.name), '{{}}') AS policies
                    FROM policies AS p WHERE {scope}) AS m
"""
"""The first due resources from `after` on, in due order, that no exhausted policy and no saturated scope stops, with
the policies whose scope they are in. What is left out is left out by a plain condition on each row, so that the index
of due times is read in order and only as far as needed (a subquery per row cost about 10 µs, for each of a backlog's
rows at each claim)."""

PASSES = 8
"""How many windows of candidates one claim reads at most: each next one leaves out the scopes that filled the
earlier ones, so a backlog of one scope (100,000 due, or held to max_in_flight 1) cannot hide another behind it. A
scope behind more than seven such backlogs waits until one of them shrinks below a window (2,000)."""


def _in_scope(budget: Budget, params: dict[str, Any]) -> str:
    """`s` is in the budget's scope, as a plain condition whose values are bound in `params`."""
    i = len(params)
    params[f"k{i}"], params[f"s{i}"] = budget.kinds, budget.selector
    return f"""((CAST(:k{i} AS text[]) IS NULL OR s.kind = ANY(CAST(:k{i} AS text[])))
             AND (CAST(:s{i} AS jsonb) IS NULL OR s.labels @> CAST(:s{i} AS jsonb)))"""


def _excluding(budgets: list[Budget], rollout_only: bool, params: dict[str, Any]) -> str:
    rollout = f" AND {_ROLLOUT}" if rollout_only else ""
    return "".join(f"\n        AND NOT ({_in_scope(b, params)}{rollout})" for b in budgets)


def _leaving_out(groups: list[Group], budgets: dict[str, Budget], params: dict[str, Any]) -> str:
    """Rows of these groups (a kind and exactly the policies it is in) left out."""
    said = ""
    for kind, names in groups:
        i = len(params)
        params[f"g{i}"] = kind
        scopes = [_in_scope(b, params) if b.name in names else f"NOT {_in_scope(b, params)}" for b in budgets.values()]
        said += f"\n        AND NOT (s.kind = :g{i} AND {' AND '.join(scopes) or 'true'})"
    return said


Group = tuple[str, tuple[str, ...]]
"""A scope for fairness: a kind and the policies whose scope a resource of it is in."""


def _candidates(
    conn: Connection, budgets: dict[str, Budget], window: int, after: datetime | None, saturated: list[Group]
) -> list[Any]:
    params: dict[str, Any] = {}
    stopped = [b for b in budgets.values() if b.starts is not None and b.starts <= 0]
    held = [b for b in budgets.values() if b.rollouts is not None and b.rollouts <= 0 and b not in stopped]
    excluded = (
        _excluding(stopped, False, params) + _excluding(held, True, params) + _leaving_out(saturated, budgets, params)
    )
    statement = text(_CANDIDATES.format(rollout=_ROLLOUT, excluded=excluded, scope=in_scope("f")))
    selectors = [bindparam(k, type_=JSONB) for k in params if k.startswith("s")]
    values = {**params, "window": window, "after": after or datetime.min.replace(tzinfo=UTC)}
    return list(conn.execute(statement.bindparams(*selectors), values))


def round_robin(conn: Connection, budgets: dict[str, Budget], batch: int) -> list[Any]:
    """The due resources worth considering, in round-robin order of their groups (the first due of each group, then
    the second, ...). A window that one group fills (`batch` of its rows or more) is read on from its end, leaving that
    group out, up to PASSES windows."""
    window = max(4 * batch, 2_000)
    found: dict[tuple[str, str], Any] = {}
    saturated: list[Group] = []
    after = None
    for _ in range(PASSES):
        rows = _candidates(conn, budgets, window, after, saturated)
        found.update({(r.kind, r.name): r for r in rows if (r.kind, r.name) not in found})
        if len(rows) < window:
            break
        sizes = collections.Counter((r.kind, tuple(r.policies)) for r in found.values())
        filled = [g for g, n in sizes.items() if n >= batch and g not in saturated]
        if not filled:
            break
        saturated += filled
        after = rows[-1].next_reconcile_at
    rank: collections.Counter[Group] = collections.Counter()
    ordered = []
    for r in sorted(found.values(), key=lambda r: (r.next_reconcile_at, r.kind, r.name)):
        group = (r.kind, tuple(r.policies))
        rank[group] += 1
        ordered.append((rank[group], r.next_reconcile_at, r.kind, r.name, r))
    return [entry[-1] for entry in sorted(ordered, key=lambda e: e[:4])]
