"""The buffer dashboard under ``/admin/buffer/`` (docs/architecture.md#operator-admin): staff-only admin pages
that read Redis live. Thin: each view reads through ``Buffer`` (a bounded number of round trips, whatever the
number of tenants), looks up the names of the tenants it shows, and lets ``sweep.dashboard`` judge.

* ``/admin/buffer/``: the flags, the health verdict, one row per shard (shards with nothing to show are
  folded away unless ``?all=1``) and the last hour's charts (``sweep.charts``).
* ``/admin/buffer/shard/<k>/``: the shard's deepest orgs and envs (``TOP_N`` each, ``Buffer.top_envs``).
* ``/admin/buffer/org/<org>/env/<env>/``: the env's counts, its open stuck entries and the head of its queue.

URLs are wired by ``sweep.admin.urls`` (included ahead of the admin site), each view wrapped in
``admin.site.admin_view``: an anonymous or non-staff visitor is sent to the admin login.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from buffer.buffer import Buffer, BufferUnavailable
from buffer.values import Entry
from drainer import epochs, heartbeat, tasks
from mollifier_project.clock import from_ms, now_ms
from runs.admin.privacy import shown
from runs.models import Environment, Organization
from sweep import charts, dashboard, steer
from sweep.admin.stuck_entries import REASON_MAX, REPAIR_PERMISSION
from sweep.models import StuckEntry

TOP_N = 50  # orgs and envs listed on a shard page
HEAD_N = 50  # queue entries listed on an env page
STUCK_N = 200  # stuck entries listed on an env page
LOSSES_N = 10  # unacknowledged data losses shown as banners (a flapping Redis may leave many)
REFRESH_S = 15  # buffer pages reload themselves this often unless ``?refresh=0`` (docs/operations.md#admin-screens)


def _render(request: HttpRequest, template: str, title: str, status: int = 200, **context: Any) -> HttpResponse:
    """Every buffer page, with the banner of unacknowledged data losses (from Postgres: shown while Redis is
    unreachable too)."""
    losses = epochs.unacknowledged(limit=LOSSES_N)
    more = epochs.unacknowledged_count() - len(losses) if len(losses) == LOSSES_N else 0
    refresh = request.GET.get("refresh") != "0"
    switch = request.GET.copy()  # the refresh switch keeps the page's other parameters (``?all=1``)
    if refresh:
        switch["refresh"] = "0"
    else:
        switch.pop("refresh", None)
    ctx = {
        **admin.site.each_context(request), "title": title, "as_of": from_ms(now_ms()),
        "refresh_on": refresh and request.method == "GET", "refresh_s": REFRESH_S, "refresh_switch": f"?{switch.urlencode()}",
        "can_steer": request.user.has_perm(REPAIR_PERMISSION),
        "data_losses": losses, "data_losses_more": more, "can_acknowledge": request.user.has_perm(REPAIR_PERMISSION),
        **context,
    }  # fmt: skip
    return TemplateResponse(request, f"admin/buffer/{template}", ctx, status=status)


@require_POST
def acknowledge_data_loss(request: HttpRequest, loss_id: int) -> HttpResponse:
    """An operator has seen a buffer data loss (docs/runbook.md#mollifierbufferdatalost): the banner and the
    ``BufferDataLost`` alert go once none is left unacknowledged. Needs ``sweep.repair_buffer``."""
    if not request.user.has_perm(REPAIR_PERMISSION):
        raise PermissionDenied("acknowledging a data loss needs the sweep.repair_buffer permission")
    if epochs.acknowledge(loss_id, by=request.user.get_username(), now=from_ms(now_ms())):
        messages.success(request, f"Acknowledged buffer data loss {loss_id}.")
    else:
        messages.warning(request, f"Buffer data loss {loss_id} was already acknowledged (or does not exist).")
    return HttpResponseRedirect(reverse("buffer_admin:dashboard"))


def _unavailable(request: HttpRequest, template: str, title: str, exc: Exception) -> HttpResponse:
    return _render(request, template, title, status=503, error=f"The buffer's Redis is unreachable: {exc}")


def flags() -> dashboard.Flags:
    cfg = settings.MOLLIFIER
    return dashboard.Flags(
        enabled=cfg.ENABLED,
        drainer_enabled=cfg.DRAINER_ENABLED,
        stale_sweep_enabled=cfg.STALE_SWEEP_ENABLED,
        shadow_mode=cfg.SHADOW_MODE,
    )


def stuck_after_ms() -> int:
    """The dashboard's "stuck" bound at the current settings (``dashboard.stuck_bound_ms``)."""
    cfg = settings.MOLLIFIER
    expiry_s = tasks.send_expiry_s(cfg.DRAIN_INTERVAL_S, time_budget_ms=cfg.DRAIN_TIME_BUDGET_MS)
    return dashboard.stuck_bound_ms(expiry_s, cfg.DRAIN_TIME_BUDGET_MS)


def buffer_dashboard(request: HttpRequest) -> HttpResponse:
    buffer = Buffer.from_settings("operator")
    now = now_ms()
    title = "Buffer"
    try:
        stats = buffer.shard_stats(now_ms=now)
        circuits = buffer.circuits_until_ms()
        switches = buffer.switch_counts()
        memory = dashboard.memory_rows(buffer.memory())
        tick_ms = buffer.fan_out_last_tick_ms()
        beat = buffer.beat_lease()
        every_s = settings.MOLLIFIER.CHART_SAMPLE_S
        samples = buffer.chart_samples(every_s=every_s) if every_s else None
        heartbeats = buffer.drain_workers()
    except BufferUnavailable as exc:
        return _unavailable(request, "dashboard.html", title, exc)
    chart_set = None if samples is None else charts.dashboard_charts(samples, now_ms=now, every_s=every_s)
    bound = stuck_after_ms()
    workers = dashboard.worker_rows(
        heartbeats, now_ms=now, stale_after_ms=heartbeat.stale_after_ms(settings.MOLLIFIER.DRAIN_TIME_BUDGET_MS)
    )
    paused = [dashboard.Paused(*c) for c in switches]
    rows = dashboard.rows(
        stats, circuits, now_ms=now, paused=paused, stuck_after_ms=bound,
        stale_cap=settings.MOLLIFIER.SWEEP_MAX_ENTRIES_PER_ENV,
    )  # fmt: skip
    current = flags()
    tick_age_ms = None if tick_ms is None else max(0, now - tick_ms)
    verdict = dashboard.verdict(
        current, rows, stale_threshold_ms=settings.MOLLIFIER.STALE_THRESHOLD_S * 1000, fan_out_tick_age_ms=tick_age_ms,
        workers=workers,
    )  # fmt: skip
    totals = dashboard.totals(rows)
    try:
        switched = steer.switched(buffer)
    except BufferUnavailable as exc:
        return _unavailable(request, "dashboard.html", title, exc)
    show_all = request.GET.get("all") == "1"
    shown = rows if show_all else [r for r in rows if not r.idle]
    return _render(
        request, "dashboard.html", title,
        flags=current, verdict=verdict, totals=totals, rows=shown, idle=len(rows) - len(shown), show_all=show_all,
        shards=buffer.shards, total_eta=dashboard.eta(totals.eta_s), memory=memory, stuck_after=dashboard.duration(bound),
        fan_out_tick=dashboard.age_text(tick_age_ms), switched=switched, charts=chart_set, workers=workers,
        active_beat=dashboard.beat_text(beat, lease_enabled=settings.MOLLIFIER.BEAT_LEASE_ENABLED, now_ms=now),
    )  # fmt: skip


def shard_detail(request: HttpRequest, shard: int) -> HttpResponse:
    buffer = Buffer.from_settings("operator")
    if not 0 <= shard < buffer.shards:
        raise Http404(f"no shard {shard}: there are {buffer.shards}")
    now = now_ms()
    title = f"Buffer shard {shard}"
    try:
        stats = buffer.shard_stats_of(shard, now_ms=now)
        circuit = buffer.circuit_until_ms(shard)
        top = buffer.top_envs(shard, limit=TOP_N)
        switches = buffer.switches(shard)
    except BufferUnavailable as exc:
        return _unavailable(request, "shard.html", title, exc)
    row = dashboard.ShardRow(
        stats,
        circuit,
        now,
        dashboard.Paused(len(switches.paused_orgs), len(switches.paused_envs), len(switches.closed_envs)),
        stuck_after_ms(),
        settings.MOLLIFIER.SWEEP_MAX_ENTRIES_PER_ENV,
    )
    orgs = {o.pk: o for o in Organization.objects.filter(pk__in=[o.org_id for o in top.orgs]).only("slug")}
    envs = {e.pk: e for e in Environment.objects.filter(pk__in=[e.env_id for e in top.envs]).select_related("org")}
    org_rows = [
        {"org_id": o.org_id, "org": orgs.get(o.org_id), "depth": o.depth, "envs": o.envs,
         "paused": o.org_id in switches.paused_orgs}
        for o in top.orgs
    ]  # fmt: skip
    env_rows = [
        {
            "org_id": e.org_id, "env_id": e.env_id, "env": envs.get(e.env_id), "depth": e.depth,
            "oldest": "—" if e.head_accepted_ms is None else dashboard.duration(max(0, now - e.head_accepted_ms)),
            "paused": switches.paused(e.org_id, e.env_id), "closed": e.env_id in switches.closed_envs,
        }
        for e in top.envs
    ]  # fmt: skip
    return _render(
        request, "shard.html", title,
        shard=shard, row=row, top=top, org_rows=org_rows, env_rows=env_rows, top_n=TOP_N,
    )  # fmt: skip


def env_detail(request: HttpRequest, org_id: int, env_id: int) -> HttpResponse:
    buffer = Buffer.from_settings("operator")
    shard = buffer.shard_for(org_id)
    now = now_ms()
    env = Environment.objects.select_related("org").filter(pk=env_id, org_id=org_id).first()
    title = f"Buffer: environment {env or env_id}"
    try:
        head: list[Entry] = buffer.queue_head(org_id=org_id, env_id=env_id, limit=HEAD_N)
        (census,) = buffer.env_census(org_id=org_id, env_ids=[env_id])
        switches = buffer.switches(shard)
    except BufferUnavailable as exc:
        return _unavailable(request, "env.html", title, exc)
    stuck = list(
        StuckEntry.objects.filter(env_id=env_id, resolved_at__isnull=True).order_by("accepted_at", "run_id")[
            : STUCK_N + 1
        ]
    )
    for s in stuck:
        s.error_shown = shown(request, s.last_error)  # type: ignore[attr-defined]
    head_rows = [
        {"entry": e, "age": dashboard.duration(max(0, now - e.accepted_ms)), "cancelled": e.cancelled,
         "error": shown(request, e.last_error)}
        for e in head
    ]  # fmt: skip
    return _render(
        request, "env.html", title,
        shard=shard, org_id=org_id, env_id=env_id, env=env, census=census, head=head_rows, head_n=HEAD_N,
        stuck=stuck[:STUCK_N], stuck_more=len(stuck) > STUCK_N, stuck_n=STUCK_N,
        paused=switches.paused(org_id, env_id), closed=env_id in switches.closed_envs,
        env_paused=env_id in switches.paused_envs, org_paused=org_id in switches.paused_orgs,
    )  # fmt: skip


@require_POST
def steer_switch(request: HttpRequest, action: str, org_id: int, env_id: int | None = None) -> HttpResponse:
    """Pause/resume an org or env, close/open an env's intake (``sweep.steer``). Needs ``sweep.repair_buffer``.
    Pause and close first answer a confirmation page (the entries waiting, the org/env names); the form on it
    posts again with ``confirm=1``. Then back to ``next`` (a page of this site) or the env's page."""
    if not request.user.has_perm(REPAIR_PERMISSION):
        raise PermissionDenied("steering the buffer needs the sweep.repair_buffer permission")
    try:
        what = steer.Action(action)
    except ValueError:
        raise Http404(f"no switch {action!r}") from None
    if env_id is None and what in (steer.Action.CLOSE, steer.Action.OPEN):
        raise Http404("an intake is closed or opened per environment, not per org")
    try:
        scope = steer.scope_of(org_id, env_id)
    except steer.UnknownScope as exc:
        raise Http404(str(exc)) from None
    buffer = Buffer.from_settings("operator")
    back = request.POST.get("next", "")
    if not back.startswith("/") or not url_has_allowed_host_and_scheme(back, allowed_hosts=None):
        back = reverse("buffer_admin:dashboard")  # only a path of this site: "//host" and "/\\host" lead off it
    try:
        if what.asks_first and request.POST.get("confirm") != "1":
            env_ids = [scope.env.pk] if scope.env else list(scope.org.environments.values_list("pk", flat=True))
            census = buffer.env_census(org_id=scope.org_id, env_ids=env_ids) if env_ids else []
            return _render(
                request, "confirm_switch.html", f"{what.value.capitalize()} {scope}?",
                action=what.value, scope=scope, next=back, queued=sum(c.queued for c in census),
                retrying=sum(c.retrying for c in census), envs=len(env_ids), reason_max=REASON_MAX,
                already=steer.already(buffer, what, scope),
            )  # fmt: skip
        done = steer.apply(
            buffer, what, scope, user=request.user.get_username(), source="admin",
            reason=request.POST.get("reason", "")[:REASON_MAX],
        )  # fmt: skip
    except BufferUnavailable as exc:
        messages.error(request, f"The buffer's Redis is unreachable: {exc}")
        return HttpResponseRedirect(back)
    except steer.UnknownScope as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(back)
    said = done.said[0].upper() + done.said[1:] + "."
    if done.changed:
        messages.success(request, said)
    else:  # a second click, or another operator was first: nothing changed
        messages.warning(request, said)
    return HttpResponseRedirect(back)
