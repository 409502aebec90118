"""The console's maintenance pages: repair orders (/orders), the equipment register (/equipment),
inspections (/inspections) and the shift log with its handover (/shift), each with its /api twin.

Who may do what is auth.py's: guards create, assign and follow up orders and keep the shift log;
the electrician works orders, inspects and keeps the register; an admin does everything. Every
POST carries the session's CSRF token (checked by `guarded`); an upload's size is checked before
its body is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..clock import to_us
from ..ledger import maintenance as book
from ..maintenance import orders as order_logic
from ..maintenance.inspections import plan as plan_of
from ..maintenance.register import RegisterError, export_register, import_register
from ..private import make_private_dir, replace_file
from .auth import may
from .handlers import Denied, wants_json
from .headers import REPORT_CSP
from .views.maintenance import (equipment_view, handover_view, inspections_view, order_view, orders_view, shift_view,
                                task_view)

log = logging.getLogger(__name__)
PHOTO_TYPES = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png", b"RIFF": ".webp"}
MAX_REGISTER_BYTES = 10 * 1024 * 1024
PHOTO_NAME = re.compile(r"^[0-9]+-[A-Za-z0-9_.-]+-[0-9a-f]{16}\.(jpg|png|webp)$")


def _int(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 12 else None


def photos_dir(cfg):
    """Inspection photos live beside the ledger, as its key file does."""
    return cfg.storage_path.with_name(cfg.storage_path.name + ".photos")


def maintenance_routes(ctx, guarded, render) -> list:
    def now() -> datetime:
        gw = ctx.gateway
        clock = getattr(gw, "clock", None) if gw is not None else None
        return clock.now() if clock is not None else datetime.now(timezone.utc)

    async def query(fn, *args, **kw):
        def work():
            with ctx.db() as db:
                return fn(db, *args, **kw)
        return await asyncio.to_thread(work)

    def twins(path, permission, template, data, key="data"):
        @guarded(permission)
        async def page(request: Request, user) -> Response:
            return render(request, template, **{key: await data(request, user)})

        @guarded(permission)
        async def api(request: Request, user) -> Response:
            return JSONResponse(await data(request, user))
        return [Route(path, page), Route("/api" + path, api)]

    def who(user) -> str:
        return user.display_name or user.name

    def done(request: Request, target: str, body: dict) -> Response:
        return JSONResponse(body) if wants_json(request) else RedirectResponse(target, status_code=303)

    def refused(e: order_logic.OrderError):
        return Denied(e.status, e.code)

    def ready():
        if not ctx.cfg.storage_path.exists():
            raise Denied(409, "not_found")

    # ---- repair orders --------------------------------------------------------------------------
    def workers() -> list[dict]:
        return [{"name": u.name, "display": u.display_name or u.name, "role": u.role} for u in ctx.users.values()
                if u.role in ("electrician", "admin")]

    async def orders_data(request: Request, user) -> dict:
        return await query(lambda db: orders_view(ctx.cfg, db, now(), ctx.tz, workers()))

    async def order_data(request: Request, user) -> dict:
        oid = _int(request.path_params["order_id"])
        found = await query(lambda db: order_view(ctx.cfg, db, oid, now(), ctx.tz)) if oid is not None else None
        if found is None:
            raise Denied(404, "not_found")
        found["may"] = {name: may(user.role, s.permission) for name, s in order_logic.STEPS.items()}
        found["workers"] = workers()
        return found

    def alarm_of(alert_id: str) -> dict | None:
        gw = ctx.gateway
        live = gw.live_alert(alert_id) if gw is not None else None
        if live is not None:
            return {"kind": live.kind, "source": live.source, "message": live.message}
        with ctx.db() as db:
            from ..ledger.queries import alert_changes
            rows = alert_changes(db, alert_id) if db is not None else []
        if not rows:
            return None
        from ..ledger.queries import alert_kind_state
        with ctx.db() as db:
            kind, _ = alert_kind_state(db, alert_id)
        return {"kind": kind, "source": rows[0]["source"], "message": rows[0]["message"]}

    @guarded("order_create")
    async def order_create(request: Request, user) -> Response:
        """From an alarm in one click (`alert_id`: its device and words prefilled), from a
        resident's report (household, phone, what, where), from a failed inspection item."""
        form = dict((await request.form()).items())
        origin = str(form.get("origin", "staff"))
        fields = {k: form.get(k) for k in ("category", "what", "device", "location", "household", "phone", "note")}
        if origin == "alarm":
            aid = str(form.get("alert_id", ""))
            alarm = await asyncio.to_thread(alarm_of, aid)
            if alarm is None:
                raise Denied(404, "not_found")
            fields.update(alert_id=aid, device=fields.get("device") or alarm["source"],
                          what=fields.get("what") or alarm["message"],
                          category=fields.get("category") or order_logic.category_for_alert(ctx.cfg, alarm["kind"]))
        elif origin == "inspection":
            tid = _int(str(form.get("inspection_task", "")))
            t = await query(book.task, tid) if tid is not None else None
            if t is None:
                raise Denied(404, "not_found")
            fields.update(inspection_task=tid, inspection_item=form.get("inspection_item"))
        ready()
        try:
            oid = await asyncio.to_thread(order_logic.create, ctx.cfg, origin, fields, who(user), user.role, now())
        except order_logic.OrderError as e:
            raise refused(e) from None
        log.info("web: repair order %s created by %s (%s, %s)", oid, who(user), origin, fields.get("category"))
        return done(request, f"/orders/{oid}", {"id": oid, "state": "new"})

    @guarded("orders")
    async def order_step(request: Request, user) -> Response:
        oid = _int(request.path_params["order_id"])
        if oid is None:
            raise Denied(404, "not_found")
        form = dict((await request.form()).items())
        ready()
        try:
            o = await asyncio.to_thread(order_logic.move, ctx.cfg, oid, request.path_params["step"], form, who(user),
                                        user.role, now(), may)
        except order_logic.OrderError as e:
            raise refused(e) from None
        log.info("web: repair order %s: %s by %s -> %s", oid, request.path_params["step"], who(user), o["state"])
        return done(request, f"/orders/{oid}", {"id": oid, "state": o["state"]})

    # ---- equipment --------------------------------------------------------------------------------
    async def equipment_data(request: Request, user) -> dict:
        return await query(lambda db: equipment_view(ctx.cfg, db))

    @guarded("equipment")
    async def equipment_download(request: Request, user) -> Response:
        kind = request.path_params["kind"]
        if kind not in ("xlsx", "csv", "csv-gbk"):
            raise Denied(404, "not_found")
        lang = request.cookies.get("lang") or ctx.cfg.web.language
        data = await asyncio.to_thread(export_register, ctx.cfg, kind[:4].rstrip("-"),
                                       "gbk" if kind == "csv-gbk" else "utf-8", lang)
        ext = "xlsx" if kind == "xlsx" else "csv"
        media = ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" if ext == "xlsx"
                 else f"text/csv; charset={'gbk' if kind == 'csv-gbk' else 'utf-8'}")
        return Response(data, media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="equipment-{ctx.cfg.site.id}.{ext}"'})

    async def too_big(request: Request, limit: int) -> Response | None:
        """Refuse an upload by its declared length before its body is read (413), or one that
        declares none (411): the form parser would otherwise spool any size to disk."""
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return JSONResponse({"error": "length_required"}, status_code=411)
        if int(length) > limit:
            return JSONResponse({"error": "too_large", "limit_bytes": limit}, status_code=413)
        return None

    @guarded("equipment_edit")
    async def _equipment_import(request: Request, user) -> Response:
        form = await request.form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise Denied(400, "equipment_no_file")
        data = await upload.read()
        ready()
        try:
            added, changed = await asyncio.to_thread(import_register, ctx.cfg, data, upload.filename or "upload",
                                                     who(user), to_us(now()))
        except RegisterError as e:
            log.info("web: equipment import by %s refused: %d problem(s)", who(user), e.count)
            if wants_json(request):
                return JSONResponse({"error": "equipment_problems", "problems": e.problems, "count": e.count},
                                    status_code=400)
            data = await query(lambda db: equipment_view(ctx.cfg, db))
            return render(request, "equipment.html", status=400, data=data, problems=e.problems)
        log.info("web: equipment import by %s: %d added, %d updated", who(user), added, changed)
        return done(request, f"/equipment?added={added}&changed={changed}", {"added": added, "changed": changed})

    async def equipment_import(request: Request) -> Response:
        return await too_big(request, MAX_REGISTER_BYTES) or await _equipment_import(request)

    # ---- inspections ------------------------------------------------------------------------------
    async def inspections_data(request: Request, user) -> dict:
        return await query(lambda db: inspections_view(ctx.cfg, db, now(), ctx.tz))

    async def task_data(request: Request, user) -> dict:
        tid = _int(request.path_params["task_id"])
        found = await query(lambda db: task_view(ctx.cfg, db, tid, now(), ctx.tz)) if tid is not None else None
        if found is None:
            raise Denied(404, "not_found")
        return found

    @guarded("inspection_record")
    async def _inspection_result(request: Request, user) -> Response:
        tid = _int(request.path_params["task_id"])
        t = await query(book.task, tid) if tid is not None else None
        p = plan_of(ctx.cfg, t["plan"]) if t else None
        item = request.path_params["item"]
        if p is None or item not in {i.id for i in p.items}:
            raise Denied(404, "not_found")
        form = await request.form()
        ok = str(form.get("ok", "")) in ("1", "ok", "yes", "true")
        note = str(form.get("note", "")).strip()[:500]
        photo = None
        upload = form.get("photo")
        if upload is not None and hasattr(upload, "read"):
            data = await upload.read()
            if data:
                limit = int(ctx.cfg.maintenance.photo_max_mb * 1024 * 1024)
                ext = next((e for magic, e in PHOTO_TYPES.items() if data.startswith(magic)), None)
                if len(data) > limit:
                    raise Denied(413, "photo_too_large")
                if ext is None:
                    raise Denied(400, "photo_not_image")
                photo = f"{tid}-{item}-{hashlib.sha256(data).hexdigest()[:16]}{ext}"
                folder = photos_dir(ctx.cfg)

                def keep():
                    make_private_dir(folder)
                    replace_file(folder / photo, data)
                await asyncio.to_thread(keep)
        ready()
        try:
            finished = await asyncio.to_thread(book.record_result, ctx.cfg.storage_path, tid, item, ok, note, photo,
                                               to_us(now()), who(user), [i.id for i in p.items])
        except book.Conflict:
            raise Denied(404, "not_found") from None
        log.info("web: inspection %s/%s %s by %s%s", tid, item, "ok" if ok else "FAILED", who(user),
                 "; the task is done" if finished else "")
        return done(request, f"/inspections/{tid}", {"task": tid, "item": item, "ok": ok, "photo": photo,
                                                     "task_done": finished})

    async def inspection_result(request: Request) -> Response:
        limit = int(ctx.cfg.maintenance.photo_max_mb * 1024 * 1024) + 64 * 1024     # the form's other fields
        return await too_big(request, limit) or await _inspection_result(request)

    @guarded("inspections")
    async def inspection_photo(request: Request, user) -> Response:
        name = request.path_params["name"]
        path = photos_dir(ctx.cfg) / name
        if not PHOTO_NAME.match(name) or not path.is_file():
            raise Denied(404, "not_found")
        return FileResponse(path)

    # ---- shift log and handover -----------------------------------------------------------------
    async def shift_data(request: Request, user) -> dict:
        return await query(lambda db: shift_view(ctx.cfg, db, now(), ctx.tz))

    async def handover_data(request: Request, user) -> dict:
        sid = _int(request.path_params["shift_id"])
        found = await query(lambda db: handover_view(ctx.cfg, db, sid, now(), ctx.tz)) if sid is not None else None
        if found is None:
            raise Denied(404, "not_found")
        return found

    @guarded("shift")
    async def shift_action(request: Request, user) -> Response:
        action = request.path_params["action"]
        form = await request.form()
        ready()
        at = to_us(now())
        try:
            if action == "start":
                sid = await asyncio.to_thread(book.start_shift, ctx.cfg.storage_path, who(user), at)
            else:
                sid = _int(str(form.get("shift", "")))
                if sid is None:
                    raise Denied(404, "not_found")
                if action == "handover":
                    # the admin may hand over for a guard who left without doing it
                    mine = None if user.role == "admin" else who(user)
                    await asyncio.to_thread(book.hand_over, ctx.cfg.storage_path, sid, mine,
                                            str(form.get("notes", "")).strip()[:4000], at)
                elif action == "confirm":
                    sid = await asyncio.to_thread(book.confirm_handover, ctx.cfg.storage_path, sid, who(user), at)
                else:
                    raise Denied(404, "not_found")
        except book.Conflict as e:
            log.info("web: shift %s by %s refused: %s", action, who(user), e)
            raise Denied(409, "shift_conflict") from None
        log.info("web: shift %s by %s (shift %s)", action, who(user), sid)
        return done(request, "/shift", {"shift": sid, "action": action})

    # ---- the monthly service and safety report (admin) ----------------------------------------------
    def lang_of(request: Request) -> str:
        lang = request.cookies.get("lang") or ctx.cfg.web.language
        return lang if lang in ("zh", "en") else "zh"

    def service_month(month: str):
        from ..maintenance.service_report import build, month_bounds
        try:
            start, _ = month_bounds(month, ctx.tz)
        except ValueError:
            raise Denied(404, "service_bad_month") from None
        at = now()
        if start > to_us(at):
            raise Denied(404, "service_bad_month")
        with ctx.db() as db:
            if db is None:
                raise Denied(409, "not_found")
            return build(ctx.cfg, db, month, at)

    def recent_months(at: datetime) -> list[str]:
        from ..maintenance.service_report import previous_months
        this = at.astimezone(ctx.tz).strftime("%Y-%m")
        return [this] + previous_months(this, 12)[::-1]

    async def service_data(request: Request, user) -> dict:
        from ..maintenance.service_render import context
        months = recent_months(now())
        # the last month that is over, unless one is asked for
        month = request.query_params.get("month") or months[1]
        report = await asyncio.to_thread(service_month, month)
        if wants_json(request) or request.url.path.startswith("/api/"):
            return {"month": month, "months": months, "report": report.as_json()}
        lang = lang_of(request)
        rows = context(report, lang)
        return {"month": month, "months": months, "so_far": report.end_us > report.as_of_us, "rows": rows}

    @guarded("service")
    async def service_report_page(request: Request, user) -> Response:
        from ..maintenance.service_render import render_html
        report = await asyncio.to_thread(service_month, request.path_params["month"])
        html = await asyncio.to_thread(render_html, report, lang_of(request))
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": REPORT_CSP})

    @guarded("service")
    async def service_xlsx(request: Request, user) -> Response:
        import tempfile
        from pathlib import Path

        from ..maintenance.service_render import write_xlsx
        month = request.path_params["month"]
        report = await asyncio.to_thread(service_month, month)

        def workbook() -> bytes:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "service.xlsx"
                write_xlsx(report, path, lang_of(request))
                return path.read_bytes()
        data = await asyncio.to_thread(workbook)
        return Response(data, media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                        headers={"Content-Disposition": f'attachment; filename="service-{month}.xlsx"'})

    return [
        *twins("/orders", "orders", "orders.html", orders_data),
        Route("/orders/new", order_create, methods=["POST"]),
        *twins("/orders/{order_id}", "orders", "order.html", order_data),
        Route("/orders/{order_id}/{step}", order_step, methods=["POST"]),
        *twins("/equipment", "equipment", "equipment.html", equipment_data),
        Route("/equipment/download/{kind}", equipment_download),
        Route("/equipment/import", equipment_import, methods=["POST"]),
        *twins("/inspections", "inspections", "inspections.html", inspections_data),
        Route("/inspections/photos/{name}", inspection_photo),
        *twins("/inspections/{task_id}", "inspections", "inspection.html", task_data),
        Route("/inspections/{task_id}/{item}", inspection_result, methods=["POST"]),
        *twins("/shift", "shift", "shift.html", shift_data),
        Route("/shift/{action}", shift_action, methods=["POST"]),
        *twins("/shift/{shift_id}/handover", "shift", "handover.html", handover_data),
        *twins("/service", "service", "service.html", service_data),
        Route("/service/{month}/report", service_report_page),
        Route("/service/{month}/xlsx", service_xlsx),
    ]
