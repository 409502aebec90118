"""Writers for both InfluxDB generations; each posts a batch of line protocol or says why not.

- 2.x/3.x (and anything that speaks `/api/v2/write`): influxdb-client's async write API.
- 1.x: its `/write` endpoint over aiohttp (a 32-bit Raspberry Pi OS only runs 1.x, and
  InfluxDB 1.6, as shipped by Debian, has no v2 API).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import ssl

import aiohttp

from ..config import InfluxConfig
from .lineprotocol import PRECISION


class WriteError(Exception):
    """A batch the server did not confirm. `kind` decides what the drainer does with it."""

    def __init__(self, status: int | None, reason: str):
        self.status = status
        self.reason = " ".join(reason.split())[:500]
        super().__init__(f"HTTP {status}: {self.reason}" if status else self.reason)

    @property
    def kind(self) -> str:
        s = self.status
        if s in (400, 422):
            return "bad_data"      # move aside (after isolating the bad points), never retry
        if s == 413:
            return "too_large"     # split the batch
        if s in (401, 403, 404):
            return "config"        # wrong credentials or database: retry, say so loudly
        return "retry"             # network, timeouts, 429, 5xx


def _secret(name: str | None) -> str:
    return os.environ.get(name, "") if name else ""


def _ssl_context(cfg: InfluxConfig, base_dir) -> ssl.SSLContext | bool | None:
    if not cfg.url.startswith("https"):
        return None
    if not cfg.verify_tls:
        return False
    ctx = ssl.create_default_context()
    if cfg.ca_file:
        ctx.load_verify_locations(cafile=str(base_dir / cfg.ca_file))
    return ctx


class V1Writer:
    def __init__(self, cfg: InfluxConfig, base_dir):
        self.cfg = cfg
        self._ssl = _ssl_context(cfg, base_dir)
        self._url = cfg.url.rstrip("/") + "/write"
        self._params = {"db": cfg.database, "precision": PRECISION}
        if cfg.retention_policy:
            self._params["rp"] = cfg.retention_policy
        user, password = _secret(cfg.username_env), _secret(cfg.password_env)
        self._auth = aiohttp.BasicAuth(user, password) if user else None
        self._session: aiohttp.ClientSession | None = None

    async def write(self, lines: list[str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s))
        body = "\n".join(lines).encode()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.cfg.gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            async with self._session.post(self._url, params=self._params, data=body, headers=headers,
                                          auth=self._auth, ssl=self._ssl) as resp:
                if resp.status == 204 or resp.status == 200:
                    return
                text = await resp.text()
                raise WriteError(resp.status, resp.headers.get("X-Influxdb-Error") or text)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise WriteError(None, f"{self.cfg.url}: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class V2Writer:
    def __init__(self, cfg: InfluxConfig, base_dir):
        self.cfg = cfg
        self.base_dir = base_dir
        self._client = None
        self._api = None

    async def write(self, lines: list[str]) -> None:
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
        from influxdb_client.domain.write_precision import WritePrecision

        if self._client is None:
            extra = {}
            if self.cfg.url.startswith("https"):
                extra = {"verify_ssl": self.cfg.verify_tls}
                if self.cfg.ca_file:
                    extra["ssl_ca_cert"] = str(self.base_dir / self.cfg.ca_file)
            self._client = InfluxDBClientAsync(
                self.cfg.url, token=_secret(self.cfg.token_env), org=self.cfg.org,
                timeout=int(self.cfg.timeout_s * 1000), enable_gzip=self.cfg.gzip, **extra)
            self._api = self._client.write_api()
        try:
            await self._api.write(self.cfg.bucket, self.cfg.org, "\n".join(lines), WritePrecision.MS)
        except InfluxDBError as e:
            status = getattr(e, "status", None) or (e.response.status if getattr(e, "response", None) else None)
            raise WriteError(status, e.message or str(e)) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise WriteError(None, f"{self.cfg.url}: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def make_writer(cfg: InfluxConfig, base_dir):
    return V1Writer(cfg, base_dir) if cfg.version == 1 else V2Writer(cfg, base_dir)
