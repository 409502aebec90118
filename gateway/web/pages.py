"""The console's other pages (meters, patrol, access, allocation, health) and their JSON API.

Each page and its /api twin share one view function (gateway/web/views) and the same
permission. Views run in a worker thread with their own read-only connection: a week of a
meter's readings takes a moment to decode, and the event loop also polls the meters.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timezone

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from .app import Denied
from .views import charts
from .views.access import access_view
from .views.allocation import KINDS, MONTH, allocation_view, latest_run, run_file
from .views.health import clock_synced, health_view
from .views.meters import meter_detail, meters_overview
from .views.patrol import patrol_day


def page_routes(ctx, guarded, render) -> list:
    def now() -> datetime:
        gw = ctx.gateway          # inside the gateway its clock rules (a replay runs simulated time)
        clock = getattr(gw, "clock", None) if gw is not None else None
        return clock.now() if clock is not None else datetime.now(timezone.utc)

    async def query(fn, *args, **kw):
        def work():
            with ctx.db() as db:
                return fn(db, *args, **kw)
        return await asyncio.to_thread(work)

    # ---- meters ---------------------------------------------------------------------------------
    async def meters_data() -> dict:
        return await query(lambda db: meters_overview(ctx.cfg, db, now()))

    @guarded("meters")
    async def meters(request: Request, user) -> Response:
        return render(request, "meters.html", data=await meters_data())

    @guarded("meters")
    async def api_meters(request: Request, user) -> Response:
        return JSONResponse(await meters_data())

    async def meter_data(request: Request) -> dict:
        found = await query(lambda db: meter_detail(ctx.cfg, db, request.path_params["meter_id"], now()))
        if found is None:
            raise Denied(404, "not_found")
        return found

    @guarded("meters")
    async def meter(request: Request, user) -> Response:
        return render(request, "meter.html", m=await meter_data(request), line_chart=charts.line_chart,
                      bar_chart=charts.bar_chart, tz=ctx.tz)

    @guarded("meters")
    async def api_meter(request: Request, user) -> Response:
        return JSONResponse(await meter_data(request))

    # ---- patrol ---------------------------------------------------------------------------------
    async def patrol_data(request: Request) -> dict:
        try:
            day = date.fromisoformat(request.query_params.get("date", ""))
        except ValueError:
            day = None                            # absent or not a date: today
        return await query(lambda db: patrol_day(ctx.cfg, db, day, now()))

    @guarded("patrol")
    async def patrol(request: Request, user) -> Response:
        return render(request, "patrol.html", data=await patrol_data(request))

    @guarded("patrol")
    async def api_patrol(request: Request, user) -> Response:
        return JSONResponse(await patrol_data(request))

    # ---- access ---------------------------------------------------------------------------------
    async def access_data(request: Request) -> dict:
        q = request.query_params
        return await query(lambda db: access_view(ctx.cfg, db, now(), q.get("door", ""), q.get("category", "")))

    @guarded("access")
    async def access(request: Request, user) -> Response:
        return render(request, "access.html", data=await access_data(request))

    @guarded("access")
    async def api_access(request: Request, user) -> Response:
        return JSONResponse(await access_data(request))

    # ---- allocation -----------------------------------------------------------------------------
    async def allocation_data(request: Request) -> dict:
        month = request.query_params.get("month", "")
        return await query(lambda db: allocation_view(db, ctx.tz, month if MONTH.match(month) else "",
                                                      ctx.allocation_dirs))

    @guarded("allocation")
    async def allocation(request: Request, user) -> Response:
        return render(request, "allocation.html", data=await allocation_data(request))

    @guarded("allocation")
    async def api_allocation(request: Request, user) -> Response:
        return JSONResponse(await allocation_data(request))

    async def allocation_file(request: Request, kind: str) -> FileResponse:
        month = request.path_params["month"]
        if not MONTH.match(month) or kind not in KINDS:
            raise Denied(404, "not_found")
        run = await query(latest_run, month)
        if run is None:
            raise Denied(404, "not_found")
        path = run_file(run, kind, ctx.allocation_dirs)
        if path is None:
            raise Denied(404, "files_missing")
        if kind == "html":                        # the report, shown in the browser
            return FileResponse(path, media_type=KINDS[kind], filename=path.name, content_disposition_type="inline")
        return FileResponse(path, media_type=KINDS[kind], filename=path.name)

    @guarded("allocation")
    async def allocation_report(request: Request, user) -> Response:
        return await allocation_file(request, "html")

    @guarded("allocation")
    async def allocation_download(request: Request, user) -> Response:
        return await allocation_file(request, request.path_params["kind"])

    # ---- health ---------------------------------------------------------------------------------
    async def health_data() -> dict:
        synced = await asyncio.to_thread(clock_synced)
        return await query(lambda db: health_view(ctx, db, now(), synced))

    @guarded("health")
    async def health(request: Request, user) -> Response:
        return render(request, "health.html", data=await health_data())

    @guarded("health")
    async def api_health(request: Request, user) -> Response:
        return JSONResponse(await health_data())

    return [
        Route("/meters", meters), Route("/api/meters", api_meters),
        Route("/meters/{meter_id}", meter), Route("/api/meters/{meter_id}", api_meter),
        Route("/patrol", patrol), Route("/api/patrol", api_patrol),
        Route("/access", access), Route("/api/access", api_access),
        Route("/allocation", allocation), Route("/api/allocation", api_allocation),
        Route("/allocation/{month}/report", allocation_report),
        Route("/allocation/{month}/download/{kind}", allocation_download),
        Route("/health", health), Route("/api/health", api_health),
    ]
