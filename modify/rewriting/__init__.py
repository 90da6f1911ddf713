"""Queries and non-destructive rewriters (filled in by the rewriters work)."""

__all__: list[str] = []
