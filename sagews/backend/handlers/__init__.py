"""HTTP handlers; each module exposes ``routes`` (a list of Tornado URL specs)."""
