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

INSERT = f"""INSERT INTO {TABLE} (name, interval_seconds)
SELECT 'r-' || lpad(i::text, 6, '0'), %(interval_s)s FROM generate_series(1, %(count)s) AS i"""
"""Make `count` resources named by `name(i)`; their triggers give each a status row, due at once."""
