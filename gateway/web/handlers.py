"""What every page module's handlers share: refusing a request, and telling an API call from a
browser's. Here rather than in app.py so that the page modules (pages.py,
maintenance_pages.py), which app.py mounts, do not import app.py back."""

from __future__ import annotations

from starlette.requests import Request


class Denied(Exception):
    """Raised in a guarded handler: the guard answers `status` with the message `what`."""

    def __init__(self, status: int, what: str):
        self.status, self.what = status, what


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", "")
