"""Data for the console's pages: plain functions over the site config and a read-only ledger
connection, returning JSON-safe dicts and lists (the pages and their /api twins show the same).
No Starlette here, so each can be tested with a ledger and a clock value."""
