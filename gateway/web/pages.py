"""The console's other pages (meters, patrol, access, allocation, health) and their JSON API.

Each page and its /api twin share one view function (gateway/web/views) and the same
permission. Views run in a worker thread with their own read-only connection: a week of a
meter's readings takes a moment to decode, and the event loop also polls the meters.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, timezone

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .handlers import Denied, wants_json
from .headers import REPORT_CSP
from .maintenance_pages import maintenance_routes
from .views import charts
from .views.access import access_view
from .views.allocation import KINDS, MONTH, allocation_view, latest_run, run_by_id, run_file
from .views.health import bus_counters, clock_synced, health_view
from .views.lighting import lighting_view
from .views.meters import meter_detail, meters_overview
from .views.patrol import patrol_day

log = logging.getLogger(__name__)

def _run_id(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 12 else None


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

    def twins(path: str, permission: str, template: str, data, key: str = "data", **extra) -> list[Route]:
        """The page and its /api twin: one data function, one permission."""
        @guarded(permission)
        async def page(request: Request, user) -> Response:
            return render(request, template, **{key: await data(request)}, **extra)

        @guarded(permission)
        async def api(request: Request, user) -> Response:
            return JSONResponse(await data(request))
        return [Route(path, page), Route("/api" + path, api)]

    # ---- meters ---------------------------------------------------------------------------------
    async def meters_data(request: Request) -> dict:
        return await query(lambda db: meters_overview(ctx.cfg, db, now()))

    async def meter_data(request: Request) -> dict:
        found = await query(lambda db: meter_detail(ctx.cfg, db, request.path_params["meter_id"], now()))
        if found is None:
            raise Denied(404, "not_found")
        return found

    # ---- patrol ---------------------------------------------------------------------------------
    async def patrol_data(request: Request) -> dict:
        try:
            day = date.fromisoformat(request.query_params.get("date", ""))
        except ValueError:
            day = None                            # absent or not a date: today
        return await query(lambda db: patrol_day(ctx.cfg, db, day, now()))

    # ---- access ---------------------------------------------------------------------------------
    async def access_data(request: Request) -> dict:
        q = request.query_params
        return await query(lambda db: access_view(ctx.cfg, db, now(), q.get("door", ""), q.get("category", "")))

    # ---- allocation -----------------------------------------------------------------------------
    async def allocation_data(request: Request) -> dict:
        month = request.query_params.get("month", "")
        return await query(lambda db: allocation_view(db, ctx.tz, month if MONTH.match(month) else "",
                                                      ctx.allocation_dirs))

    async def allocation_file(request: Request, kind: str) -> FileResponse:
        """The month's answer file (`/allocation/<month>/...`) or a run's own (`/allocation/runs/<id>/...`)."""
        own = "run_id" in request.path_params
        if kind not in KINDS:
            raise Denied(404, "not_found")
        if own:
            run_id = _run_id(request.path_params["run_id"])
            run = await query(run_by_id, run_id) if run_id is not None else None
        else:
            month = request.path_params["month"]
            run = await query(latest_run, month) if MONTH.match(month) else None
        if run is None:
            raise Denied(404, "not_found")
        path = run_file(run, kind, ctx.allocation_dirs, own=own)
        if path is None:
            raise Denied(404, "files_missing")
        if kind == "html":                        # the report, shown in the browser
            return FileResponse(path, media_type=KINDS[kind], filename=path.name, content_disposition_type="inline",
                                headers={"Content-Security-Policy": REPORT_CSP})
        return FileResponse(path, media_type=KINDS[kind], filename=path.name)

    @guarded("allocation")
    async def allocation_report(request: Request, user) -> Response:
        return await allocation_file(request, "html")

    @guarded("allocation")
    async def allocation_download(request: Request, user) -> Response:
        return await allocation_file(request, request.path_params["kind"])

    @guarded("allocation_sign")
    async def allocation_sign(request: Request, user) -> Response:
        """Review or approve a run, as the logged-in user (gateway/billing/runs.py): the approval
        is recorded in the ledger, the run's reports are printed again, and an approved run
        becomes the month's answer (its points replace the others' in InfluxDB)."""
        from ..billing.runs import RunError, sign
        from ..ledger import Ledger, LedgerError
        run_id = _run_id(request.path_params["run_id"])
        if run_id is None:
            raise Denied(404, "sign_no_run")
        role = str((await request.form()).get("role", ""))
        who = user.display_name or user.name

        def work():
            ledger = Ledger(ctx.cfg.storage_path)
            try:
                return sign(ctx.cfg, ledger, run_id, role, who, now=now(), reprint_reports=False)
            finally:
                ledger.close()
        if not ctx.cfg.storage_path.exists():
            raise Denied(404, "not_found")
        try:
            async with ctx.signing:       # one sign-off at a time
                done = await asyncio.to_thread(work)
        except RunError as e:
            raise Denied(404 if e.code == "no_run" else 409, f"sign_{e.code}") from None
        except LedgerError:
            raise Denied(409, "sign_refused") from None
        log.info("web: allocation run %s %s by %s%s", run_id, role, who,
                 f"; superseded {done.superseded}" if done.superseded else "")
        # Printing a month's reports again takes seconds at an estate's size: the answer does not
        # wait for it (the files are replaced whole when they are ready).
        task = asyncio.create_task(reprint(run_id, done.superseded))
        ctx.background.add(task)
        task.add_done_callback(ctx.background.discard)
        if wants_json(request):
            return JSONResponse({"id": run_id, "month": done.run.month, "state": done.run.state, "by": who,
                                 "superseded": done.superseded,
                                 "answer": done.published.run if done.published else None})
        return RedirectResponse(f"/allocation?month={done.run.month}", status_code=303)

    async def reprint(run_id: int, superseded: list[int]) -> None:
        from ..billing.reprint import reprint_in_child
        try:
            async with ctx.reprinting:    # one at a time: each reads the ledger as it is when it starts
                errors = await reprint_in_child(ctx.cfg, run_id, superseded)
        except Exception:
            log.exception("web: the reports of allocation run %s could not be printed again", run_id)
            return
        for line in errors:
            log.warning("web: %s", line)

    # ---- lighting -------------------------------------------------------------------------------
    def controller():
        return getattr(ctx.gateway, "lighting", None) if ctx.gateway is not None else None

    async def lighting_data(request: Request) -> dict:
        ctl = controller()
        return await query(lambda db: lighting_view(ctx.cfg, db, now(), ctl, getattr(ctl, "planner", None)))

    @guarded("lighting")
    async def lighting_override(request: Request, user) -> Response:
        """Switch a circuit on or off until a time (at most 24 h), with a reason; `cancel` goes
        back to the plan. The controller checks who may do what (a guard: on only)."""
        from ..lighting.control import OverrideRefused
        ctl = controller()
        circuit = request.path_params["circuit"]
        if ctl is None:
            raise Denied(409, "lighting_not_running")
        if circuit not in ctl.circuits:
            raise Denied(404, "not_found")
        form = await request.form()
        who = user.display_name or user.name
        try:
            if form.get("action") == "cancel":
                ctl.cancel_override(circuit, who, user.role)
                result = {"circuit": circuit, "override": None}
            else:
                state = str(form.get("state", ""))
                if state not in ("on", "off"):
                    raise OverrideRefused("state must be on or off")
                try:
                    until = datetime.fromisoformat(str(form.get("until", "")))
                except ValueError:
                    raise OverrideRefused("until: a local date and time, e.g. 2026-12-21T23:00") from None
                if until.tzinfo is None:
                    until = until.replace(tzinfo=ctx.tz)
                done = ctl.override(circuit, state == "on", until, who, user.role, str(form.get("reason", "")))
                result = {"circuit": circuit, "override": {"on": done["on"], "until": done["until"].isoformat()}}
        except OverrideRefused as e:
            log.info("web: lighting override of %s by %s (%s) refused: %s", circuit, who, user.role, e)
            if wants_json(request):
                return JSONResponse({"error": str(e)}, status_code=403 if "guard" in str(e) else 400)
            raise Denied(403 if "guard" in str(e) or "may not" in str(e) else 400, "lighting_refused") from None
        log.info("web: lighting %s: %s by %s (%s)", circuit, result, who, user.role)
        if wants_json(request):
            return JSONResponse(result)
        return RedirectResponse("/lighting", status_code=303)

    # ---- health ---------------------------------------------------------------------------------
    async def health_data(request: Request) -> dict:
        synced = await asyncio.to_thread(clock_synced)
        counters = bus_counters(ctx.gateway)
        return await query(lambda db: health_view(ctx, db, now(), synced, counters))

    return [
        *twins("/meters", "meters", "meters.html", meters_data),
        *twins("/meters/{meter_id}", "meters", "meter.html", meter_data, key="m", line_chart=charts.line_chart,
               bar_chart=charts.bar_chart, tz=ctx.tz),
        *twins("/patrol", "patrol", "patrol.html", patrol_data),
        *twins("/access", "access", "access.html", access_data),
        *twins("/allocation", "allocation", "allocation.html", allocation_data),
        Route("/allocation/{month}/report", allocation_report),
        Route("/allocation/{month}/download/{kind}", allocation_download),
        # {run_id} is checked after the login (an int converter would answer 404 before it)
        Route("/allocation/runs/{run_id}/report", allocation_report),
        Route("/allocation/runs/{run_id}/download/{kind}", allocation_download),
        Route("/allocation/runs/{run_id}/sign", allocation_sign, methods=["POST"]),
        *twins("/health", "health", "health.html", health_data),
        *twins("/lighting", "lighting", "lighting.html", lighting_data),
        Route("/lighting/{circuit}/override", lighting_override, methods=["POST"]),
        *maintenance_routes(ctx, guarded, render),
    ]
