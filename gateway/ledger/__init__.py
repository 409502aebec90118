"""The ledger: SQLite, the local truth, and the only code of the gateway that knows its SQL.

`schema` (migrations, connections), `writer` (`Ledger`: the batched durable write path, held
rows, the outbox, allocation runs, the clock repair), `queries` (the read model: what the
console, the CLI, `gateway status`, `/metrics`, rules restore and billing read), `retention`
(what is kept how long, the disk guard), and the workers `indexer` and `checkpoint`.
"""

from .schema import LedgerError
from .allocations import allocation_runs
from .writer import Ledger, Replacement, StoredReading

__all__ = ["Ledger", "LedgerError", "Replacement", "StoredReading", "allocation_runs"]
