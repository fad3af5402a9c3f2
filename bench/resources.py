"""The benchmark's resources by kind and name, shared by its SQL, its processes and the naive peers.

Kept apart from bench/noop.py so that a peer can name resources without importing the models.
"""

KIND = "BenchNoop"
TABLE = "bench_noops"


def name(index: int) -> str:
    """The name of the index-th resource (from 1): its number is part of it, so SQL can spread due times."""
    return f"r-{index:06d}"


INDEX_SQL = "substr(name, 3)::int"
"""The index back from a name, in SQL."""

INSERT_RANGE = f"""INSERT INTO {TABLE} (name, interval_seconds)
SELECT 'r-' || lpad(i::text, greatest(6, length(i::text)), '0'), %(interval_s)s
FROM generate_series(CAST(%(first)s AS bigint), CAST(%(last)s AS bigint)) AS i"""
"""Make the resources numbered `first` to `last` (lpad alone would cut r-1000000 to r-100000)."""
INSERT = INSERT_RANGE.replace("%(first)s", "1").replace("%(last)s", "%(count)s")
"""Make `count` resources named by `name(i)`; their triggers give each a status row, due at once."""
