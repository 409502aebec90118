"""The console's other pages (meters, patrol, access, allocation, health) and their JSON API."""

from __future__ import annotations


def page_routes(ctx, guarded, render) -> list:
    return []
