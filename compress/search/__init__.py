"""``compress search``: the fastest model within the user's budgets, found by measured trials (see docs/search.md)."""
