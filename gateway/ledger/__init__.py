"""The ledger: SQLite, the local truth. `queries` is its read model."""
