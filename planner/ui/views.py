"""Views of the operator UI: thin. They check the role, read through selectors,
write through services, and render a template.

Roles as in the API (``planner.roles``): viewers see every page;
operators and admins also edit the inventory, apply plans and drain machines.
The server refuses those writes to viewers whatever the page showed them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import wraps
from typing import Any
from urllib.parse import urlencode

import orjson
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import ProtectedError, Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_http_methods, require_POST

import allocator as alloc
from planner import charts, dashboard, heatmap, selectors
from planner.api import filters
from planner.attention import datacenter_attention, revision_counts
from planner.choices import AgentStatus, MachineState, RevisionStatus
from planner.headroom import datacenter_headroom
from planner.history import ReadableEntry, readable_entries
from planner.inventory_io import InventoryError, parse_inventory
from planner.models import AuditEntry, Datacenter, EgressIP, EgressPool, Machine, PlanRevision
from planner.queries import HeatmapQuery
from planner.roles import ADMIN, OPERATOR, RANK, VIEWER, user_rank
from planner.search import search_resolve
from planner.services import inventory, plans, rebalance
from planner.services.locks import Conflict
from planner.ui import forms as f

View = Callable[..., HttpResponse]
PAGE_SIZE = 50
# A plan page lists this many machines; the rest are counted.
MACHINES_LISTED = 200
ERR_APPROVE_UNCONFIRMED = "tick the box to confirm you looked at the draft before approving it."


def forbidden(request: HttpRequest, reason: str) -> HttpResponse:
    """The styled 403 page. Returned rather than raised: a viewer opening an edit page
    is ordinary, and a raised PermissionDenied logs a full traceback for it."""
    response = render(request, "403.html", {"reason": reason}, status=403)
    response.reason_phrase = "Forbidden"
    return response


def role_required(role: str) -> Callable[[View], View]:
    """Anonymous users go to the login page; a role too low gets 403."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if user_rank(request.user) < RANK[role]:
                return forbidden(request, f"This needs the {role} role.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


viewer_required = role_required(VIEWER)
operator_required = role_required(OPERATOR)


def page(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    context["can_edit"] = user_rank(request.user) >= RANK[OPERATOR]
    return render(request, template, context, status=status)


def bad_request(
    request: HttpRequest, *, what: str, problems: list[str], back: str = ""
) -> HttpResponse:
    """A 400 page: what was asked is shown through the template, escaped, never raw."""
    context = {"what": what, "problems": problems, "back": back}
    return page(request, "ui/bad_request.html", context, status=400)


@viewer_required
def overview(request: HttpRequest) -> HttpResponse:
    cards = dashboard.overview_cards()
    waiting = [datacenter_attention(datacenter=card.datacenter) for card in cards]
    context = {
        "cards": cards,
        # The strip lists only the datacenters that need someone; the cards show them all.
        "attention": [item for item in waiting if not item.quiet],
        "running_out": selectors.pools_running_out(),
        "next": reverse("overview"),
    }
    return page(request, "ui/overview.html", context)


@gzip_page
@viewer_required
def datacenter_detail(request: HttpRequest, code: str) -> HttpResponse:
    datacenter = get_object_or_404(Datacenter, code=code)
    query = HeatmapQuery(request.GET)
    if not query.is_valid():
        return bad_request(
            request,
            what=f"The heatmap of {datacenter.code}",
            problems=query.error_lines(),
            back=reverse("datacenter", kwargs={"code": datacenter.code}),
        )
    pools = dashboard.pool_rows(datacenter=datacenter)
    controls = heatmap_controls(datacenter, query, pools=[row.pool for row in pools])
    wanted = request.GET.get("highlight", "").strip()[:200]
    controls["highlight"] = wanted
    health = dashboard.machine_health(datacenter=datacenter)
    context = {
        "search": search_resolve(query=wanted) if wanted else None,
        "datacenter": datacenter,
        "pools": pools,
        "health": health,
        "heatmap": controls,
        "ip_count": sum(row.ips for row in pools),
        "attention": datacenter_attention(datacenter=datacenter, counts=health.counts),
        "next": reverse("datacenter", kwargs={"code": datacenter.code}),
        "thresholds": dashboard.use_thresholds(datacenter=datacenter),
        "use_over_time": charts.use_over_time_figure(
            dashboard.pool_use_over_time(
                datacenter=datacenter, handed={row.pool.pk: row.ports_handed_out for row in pools}
            )
        ),
    }
    return page(request, "ui/datacenter.html", context)


@viewer_required
def search(request: HttpRequest) -> HttpResponse:
    """The search box: straight to the datacenter with the machine, IP or port highlighted,
    else the machines whose names match, or why nothing does."""
    answer = search_resolve(query=request.GET.get("q", "")[:200])
    if answer.datacenter and not answer.error:
        url = reverse("datacenter", kwargs={"code": answer.datacenter})
        return redirect(f"{url}?{urlencode({'highlight': answer.highlight}, safe=':')}")
    return page(request, "ui/search.html", {"answer": answer}, status=404 if answer.error else 200)


@gzip_page
@viewer_required
def heatmap_data(request: HttpRequest, code: str) -> HttpResponse:
    """What the page's script draws: the same body as ``GET /api/v1/datacenters/{code}/heatmap``,
    gzipped (a 4,000-row grid is 6 MB of JSON, 0.3 MB compressed) and behind the session."""
    datacenter = get_object_or_404(Datacenter, code=code)
    query = HeatmapQuery(request.GET)
    if not query.is_valid():
        # JSON, as the API's 400: the page's script reads it, and no browser renders it.
        return JsonResponse(query.errors.get_json_data(), status=400)
    picture = heatmap.datacenter_heatmap(
        datacenter=datacenter, mode=query.chosen_mode(), filters=query.heatmap_filter()
    )
    # A million cells: orjson writes them in a tenth of json.dumps' time (0.1 s saved
    # at 4,000 rows), compact and as UTF-8, to the same values.
    body = orjson.dumps(charts.heatmap_payload(picture))
    return HttpResponse(body, content_type="application/json")


def heatmap_controls(
    datacenter: Datacenter,
    query: HeatmapQuery,
    *,
    pools: list[EgressPool],
    fixed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the heatmap's controls show and where its script fetches the data."""
    data = query.cleaned_data
    return {
        "source": reverse("heatmap-data", kwargs={"code": datacenter.code}),
        "mode": query.chosen_mode(),
        "pool": data.get("pool") or "",
        "purpose": data.get("purpose") or "",
        "country": (data.get("country") or "").upper(),
        "ip": data.get("ip") or "",
        "collapse": data.get("collapse") or "auto",
        "pools": pools,
        "purposes": sorted({pool.purpose for pool in pools}),
        "countries": sorted({pool.country for pool in pools}),
        "fixed": fixed or {},
        "fixed_json": json.dumps(fixed or {}),
    }


# Plans: preview, what-if, apply.


@viewer_required
@require_http_methods(["GET", "POST"])
def plan(request: HttpRequest, code: str) -> HttpResponse:
    datacenter = get_object_or_404(Datacenter, code=code)
    if request.method == "POST":
        return plan_apply(request, datacenter)
    return plan_page(request, datacenter, f.ApplyForm())


@operator_required
def plan_apply(request: HttpRequest, datacenter: Datacenter) -> HttpResponse:
    form = f.ApplyForm(request.POST)
    if not form.is_valid():
        return plan_page(request, datacenter, form, status=400)
    try:
        revision = plans.plan_apply(
            datacenter=datacenter,
            inputs_digest=form.cleaned_data["inputs_digest"],
            user=request.user,
            reason=form.cleaned_data["reason"],
        )
    except (Conflict, alloc.CapacityError) as error:
        # The preview went stale, another writer holds the lock, or a pool is short.
        return plan_page(request, datacenter, f.ApplyForm(), refused=str(error), status=409)
    messages.success(
        request,
        f"Revision {revision.number} of {datacenter.code} applied: "
        f"{_counts(revision.diff_summary)}.",
    )
    return redirect(f"{reverse('revisions')}?datacenter={datacenter.code}")


@operator_required
@require_POST
def draft_approve(request: HttpRequest, code: str, number: int) -> HttpResponse:
    """Apply a rebalance draft as it was planned, unless its inputs moved since.

    Only with the confirmation box ticked (the form asks for it; the server checks).
    """
    datacenter = get_object_or_404(Datacenter, code=code)
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = reverse("plan", kwargs={"code": code})
    if request.POST.get("confirm") != "on":
        messages.error(request, f"Draft r{number} was not applied: {ERR_APPROVE_UNCONFIRMED}")
        return redirect(back)
    try:
        revision = rebalance.revision_approve(
            datacenter=datacenter, number=number, user=request.user
        )
    except PlanRevision.DoesNotExist:
        raise Http404(f"{code} has no revision {number}") from None
    except (Conflict, alloc.CapacityError) as error:
        messages.error(request, f"Draft r{number} was not applied: {error}")
    else:
        messages.success(
            request,
            f"Draft r{number} approved: revision {revision.number} of {code} applied "
            f"({_counts(revision.diff_summary)}).",
        )
    return redirect(back)


def _counts(summary: dict[str, Any]) -> str:
    return revision_counts(summary)


def plan_page(
    request: HttpRequest,
    datacenter: Datacenter,
    apply_form: f.ApplyForm,
    *,
    refused: str = "",
    status: int = 200,
) -> HttpResponse:
    preview = plans.plan_preview(datacenter=datacenter)
    digest = preview.inputs_digest
    apply_form.initial["inputs_digest"] = digest
    if apply_form.is_bound:
        # A refused or invalid apply shows the fresh preview's digest, never the old one.
        data = apply_form.data.copy()  # type: ignore[attr-defined]
        data["inputs_digest"] = digest
        apply_form.data = data
    context: dict[str, Any] = {
        "datacenter": datacenter,
        "preview": preview,
        "digest": digest,
        "apply_form": apply_form,
        "refused": refused,
        "pools": capacity_rows(datacenter, preview),
        "drafts": PlanRevision.objects.filter(
            datacenter=datacenter, status=RevisionStatus.DRAFT
        ).order_by("-number"),
    }
    if preview.plan is not None:
        context.update(diff_context(datacenter, preview.plan))
    context.update(what_if_context(request, datacenter))
    return page(request, "ui/plan.html", context, status=status)


def capacity_rows(datacenter: Datacenter, preview: plans.PlanPreview) -> list[dict[str, Any]]:
    """Per pool: slots before (now) and after the plan, and the IPs a short pool needs."""
    before = datacenter_headroom(datacenter=datacenter)
    after = preview.plan.capacity if preview.plan is not None else {}
    short = {s.pool: s for s in preview.shortfalls}
    pools = EgressPool.objects.filter(datacenter=datacenter).order_by("purpose", "country", "pk")
    rows = []
    for pool in pools:
        pool.datacenter = datacenter
        rows.append(
            {
                "pool": pool,
                "before": before.get(pool.key),
                "after": after.get(pool.key),
                "shortfall": short.get(pool.key),
            }
        )
    return rows


def diff_context(datacenter: Datacenter, plan: alloc.Plan) -> dict[str, Any]:
    """The diff as a picture (the proposed heatmap) and as a table per machine."""
    picture, shown = heatmap.plan_heatmap(datacenter=datacenter, plan=plan)
    per_machine: dict[str, Counter[str]] = {}
    for kind in ("added", "draining", "freed", "revived"):
        for slice_ in getattr(plan.diff, kind):
            per_machine.setdefault(slice_.machine, Counter())[kind] += 1
    machines = sorted(per_machine.items())
    return {
        "diff_payload": charts.heatmap_payload(picture),
        "diff_rows": len(picture.rows),
        "diff_rows_total": shown,
        "summary": plan.diff.summary(),
        "machines_changed": machines[:MACHINES_LISTED],
        "machines_more": max(len(machines) - MACHINES_LISTED, 0),
    }


def what_if_context(request: HttpRequest, datacenter: Datacenter) -> dict[str, Any]:
    if "pool" not in request.GET:
        return {"what_if_form": f.WhatIfForm(datacenter=datacenter)}
    form = f.WhatIfForm(request.GET, datacenter=datacenter)
    if not form.is_valid():
        return {"what_if_form": form}
    question = form.question()
    result = dashboard.what_if(datacenter=datacenter, question=question)
    pool = question.pool
    context: dict[str, Any] = {"what_if_form": form, "what_if": result, "what_if_pool": pool.key}
    if result.plan is not None:
        # Redraw the picture and the capacity table for the hypothetical inventory.
        pool.datacenter = datacenter
        picture = heatmap.what_if_heatmap(
            datacenter=datacenter, plan=result.plan, pool=pool, usable=result.usable
        )
        context["what_if_payload"] = charts.heatmap_payload(picture)
        context["what_if_capacity"] = sorted(result.capacity.values(), key=lambda c: c.pool)
    return context


# Machines, pools, IPs.


@viewer_required
def machine_detail(request: HttpRequest, hostname: str) -> HttpResponse:
    machine = get_object_or_404(Machine.objects.select_related("datacenter"), hostname=hostname)
    slices = dashboard.machine_slices(machine=machine)
    bundle = dashboard.bundle_state(machine=machine)
    status = selectors.machine_status(machine=machine)
    context = {
        "machine": machine,
        "status": status,
        "status_css": dashboard.STATUS_CLASS[AgentStatus(status.status)],
        "slices": slices,
        "pools_served": machine.pools.order_by("purpose", "country"),
        "bundle": bundle,
        "usage_figure": charts.usage_figure(dashboard.usage_history(machine=machine)),
        "history": _history(Q(model="planner.Machine", object_pk=str(machine.pk))),
    }
    return page(request, "ui/machine.html", context)


@operator_required
@require_POST
def machine_state(request: HttpRequest, hostname: str) -> HttpResponse:
    """Drain a machine, or return it to service; a plan then moves its slices."""
    machine = get_object_or_404(Machine, hostname=hostname)
    state = request.POST.get("state", "")
    if state not in {MachineState.DRAINING, MachineState.ACTIVE}:
        return bad_request(
            request,
            what=f"The state of {hostname}",
            problems=[f"state: expected draining or active, got {state[:100]!r}"],
            back=reverse("machine", kwargs={"hostname": hostname}),
        )
    try:
        inventory.machine_save(machine=machine, values={"state": state})
    except ValidationError as error:
        messages.error(request, "; ".join(error.messages))
    except Conflict as error:
        messages.error(request, str(error))
    else:
        verb = "is draining" if state == MachineState.DRAINING else "is back in service"
        messages.success(
            request,
            f"{hostname} {verb}. Preview and apply a plan of {machine.datacenter.code} "
            "to move its slices.",
        )
    return redirect("machine", hostname=hostname)


@viewer_required
def pool_detail(request: HttpRequest, pk: int) -> HttpResponse:
    pool = get_object_or_404(EgressPool.objects.select_related("datacenter"), pk=pk)
    ips = list(pool.ips.order_by("address"))
    query = HeatmapQuery({"pool": pk, "collapse": "1"})
    query.is_valid()
    outlook = selectors.pool_outlook(pool=pool)
    context = {
        "pool": pool,
        "ips": ips,
        "row": next(
            (r for r in dashboard.pool_rows(datacenter=pool.datacenter) if r.pool.pk == pool.pk),
            None,
        ),
        "heatmap": heatmap_controls(
            pool.datacenter, query, pools=[pool], fixed={"pool": pk, "collapse": "1"}
        ),
        "forecast": outlook,
        "forecast_figure": charts.forecast_figure(outlook),
        "history": _history(
            Q(model="planner.EgressPool", object_pk=str(pool.pk))
            | Q(model="planner.EgressIP", object_pk__in=[str(ip.pk) for ip in ips])
        ),
    }
    return page(request, "ui/pool.html", context)


@viewer_required
def ip_detail(request: HttpRequest, address: str) -> HttpResponse:
    ip = get_object_or_404(EgressIP.objects.select_related("pool__datacenter"), address=address)
    query = HeatmapQuery({"ip": address, "collapse": "0"})
    query.is_valid()
    context = {
        "ip": ip,
        "slices": ip.slices.select_related("machine", "usage").order_by("lo"),
        "heatmap": heatmap_controls(
            ip.pool.datacenter, query, pools=[ip.pool], fixed={"ip": address, "collapse": "0"}
        ),
        "history": _history(Q(model="planner.EgressIP", object_pk=str(ip.pk))),
    }
    return page(request, "ui/ip.html", context)


def _history(which: Q) -> list[ReadableEntry]:
    entries = AuditEntry.objects.filter(which).order_by("-at", "-id")[:PAGE_SIZE]
    return readable_entries(entries=entries)


# Revisions and the audit log.


@viewer_required
def revisions(request: HttpRequest) -> HttpResponse:
    queryset = PlanRevision.objects.select_related("datacenter", "created_by").order_by(
        "-created_at", "-id"
    )
    return filtered_list(
        request,
        "ui/revisions.html",
        filters.PlanRevisionFilter(request.GET or None, queryset=queryset),
    )


def filtered_list(
    request: HttpRequest,
    template: str,
    filterset: Any,
    rows: Callable[[list[Any]], list[Any]] | None = None,
) -> HttpResponse:
    """A list page on the API's FilterSet: the same filters and the same errors (a bad
    value is a 400 naming the field and the value), paginated."""
    context: dict[str, Any] = {}
    status = 200
    queryset = filterset.queryset
    if filterset.is_bound and not filterset.is_valid():
        status = 400
        context["filter_errors"] = [
            f"{name}: {' '.join(errors)} (got “{filterset.data.get(name, '')}”)"
            for name, errors in filterset.errors.items()
        ]
        queryset = queryset.none()
    elif filterset.is_bound:
        queryset = filterset.qs
    query = request.GET.copy()
    query.pop("page", None)
    shown = Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))
    context.update(filter=filterset, page=shown, query=query.urlencode())
    context["rows"] = rows(list(shown.object_list)) if rows else list(shown.object_list)
    return page(request, template, context, status=status)


@viewer_required
def machine_list(request: HttpRequest) -> HttpResponse:
    queryset = Machine.objects.select_related("datacenter").order_by("hostname")
    return filtered_list(
        request, "ui/machines.html", filters.MachineFilter(request.GET or None, queryset=queryset)
    )


@viewer_required
def ip_list(request: HttpRequest) -> HttpResponse:
    queryset = EgressIP.objects.select_related("pool__datacenter").order_by("address")
    return filtered_list(
        request, "ui/ips.html", filters.EgressIPFilter(request.GET or None, queryset=queryset)
    )


@viewer_required
def audit(request: HttpRequest) -> HttpResponse:
    queryset = AuditEntry.objects.order_by("-at", "-id")
    return filtered_list(
        request,
        "ui/audit.html",
        filters.AuditEntryFilter(request.GET or None, queryset=queryset),
        rows=lambda entries: readable_entries(entries=entries),
    )


# Inventory forms and import.

KINDS: dict[str, tuple[type[Any], type[Any], str]] = {
    "datacenter": (Datacenter, f.DatacenterForm, "code"),
    "pool": (EgressPool, f.PoolForm, "pk"),
    "ip": (EgressIP, f.EgressIPForm, "address"),
    "machine": (Machine, f.MachineForm, "hostname"),
}
# What a kind is called in a title or a message ("New egress IP", not "New ip").
KIND_NAMES = {"ip": "egress IP"}


@viewer_required
def inventory_index(request: HttpRequest) -> HttpResponse:
    datacenters = list(Datacenter.objects.all())
    context = {
        "datacenters": [(dc, dashboard.rebalance_outlook(datacenter=dc)) for dc in datacenters],
        "pools": EgressPool.objects.select_related("datacenter").order_by(
            "datacenter__code", "purpose", "country"
        ),
    }
    return page(request, "ui/inventory.html", context)


@operator_required
@require_http_methods(["GET", "POST"])
def inventory_edit(request: HttpRequest, kind: str, key: str = "") -> HttpResponse:
    """Create or edit an inventory row. An edit that would displace live slices is
    refused with them named, and can then be previewed and applied together with
    the plan that drains them (``plan`` = ``preview``, then ``apply``)."""
    model, form_class, field = KINDS[kind]
    instance = get_object_or_404(model, **{field: key}) if key else model()
    initial = {name: request.GET[name] for name in ("datacenter", "pool") if name in request.GET}
    form = form_class(request.POST or None, instance=instance, initial=initial)
    f.fix_identity(form)
    noun = KIND_NAMES.get(kind, kind)
    title = f"Edit {noun} {instance}" if key else f"New {noun}"
    context: dict[str, Any] = {"form": form, "title": title}
    if request.method == "POST" and form.is_valid():
        change = _change(form, kind)
        mode = request.POST.get("plan", "") if instance.pk else ""
        if mode == "apply":
            done = _apply_with_plan(request, form, change, context)
            if done is not None:
                return done
        elif mode == "preview":
            _preview_with_plan(change, context)
        elif _save(form, change, context):
            messages.success(request, f"Saved {noun} {form.instance}.")
            return redirect(_detail_url(kind, form.instance))
    status = 400 if request.method == "POST" and "preview" not in context else 200
    return page(request, "ui/inventory_form.html", context, status)


def _change(form: Any, kind: str) -> inventory.InventoryChange:
    values = {k: v for k, v in form.cleaned_data.items() if k != "pools"}
    for name, field in form.fields.items():
        if field.disabled:
            values.pop(name, None)
    pools = form.cleaned_data.get("pools") if kind == "machine" else None
    return inventory.InventoryChange(form.instance, values, None if pools is None else list(pools))


def _save(form: Any, change: inventory.InventoryChange, context: dict[str, Any]) -> bool:
    """Write through the services; their errors (the same as the API's) go on the form."""
    try:
        if isinstance(change.instance, Machine):
            inventory.machine_save(
                machine=change.instance, values=change.values, pools=change.pools
            )
        else:
            inventory.model_save(instance=change.instance, values=change.values)
    except ValidationError as error:
        _add_errors(form, error)
        return False
    except inventory.InventoryConflict as error:
        slices = list(error.details.get("slices", []))  # type: ignore[call-overload]
        form.add_error(
            None,
            f"Not saved: this change would leave {len(slices)} live "
            f"slice{'' if len(slices) == 1 else 's'} outside what it allows.",
        )
        context["displaced"] = slices
        return False
    except Conflict as error:  # another writer holds the datacenter
        form.add_error(None, str(error))
        return False
    except ProtectedError as error:
        form.add_error(None, str(error.args[0]))
        return False
    return True


def _preview_with_plan(change: inventory.InventoryChange, context: dict[str, Any]) -> None:
    try:
        preview = inventory.inventory_plan_preview(change=change)
    except ValidationError as error:
        _add_errors(context["form"], error)
        return
    context["preview"] = preview
    context["apply_form"] = f.ApplyForm(initial={"inputs_digest": preview.inputs_digest})
    if preview.plan is not None:
        context["summary"] = preview.plan.diff.summary()
        context["machines_changed"] = sorted(preview.plan.diff.machines_touched())
        datacenter = _datacenter_of(change.instance)
        if datacenter is not None:
            picture, _ = heatmap.plan_heatmap(
                datacenter=datacenter, plan=preview.plan, edit=_edited_row(change)
            )
            context["diff_payload"] = charts.heatmap_payload(picture)


def _datacenter_of(instance: Any) -> Datacenter | None:
    if isinstance(instance, EgressIP):
        return instance.pool.datacenter
    if isinstance(instance, EgressPool | Machine):
        return instance.datacenter
    return instance if isinstance(instance, Datacenter) else None


def _edited_row(change: inventory.InventoryChange) -> Callable[[Any], Any]:
    """A heatmap row as the (unwritten) edit leaves it: an IP's range and reserved
    ports, a pool's slice size; other rows as they are."""
    values, instance = change.values, change.instance

    def edit(row: Any) -> Any:
        if isinstance(instance, EgressIP) and row.ip == instance.address:
            return replace(
                row,
                usable_lo=values.get("usable_lo", row.usable_lo),
                usable_hi=values.get("usable_hi", row.usable_hi),
                reserved=tuple(values.get("reserved_ports", row.reserved) or ()),
            )
        if isinstance(instance, EgressPool) and row.pool_id == instance.pk:
            return replace(row, slice_size=values.get("slice_size", row.slice_size))
        return row

    return edit


def _apply_with_plan(
    request: HttpRequest, form: Any, change: inventory.InventoryChange, context: dict[str, Any]
) -> HttpResponse | None:
    apply_form = f.ApplyForm(request.POST)
    if not apply_form.is_valid():
        _preview_with_plan(change, context)
        context["apply_form"] = apply_form
        return None
    try:
        revision = inventory.inventory_plan_apply(
            change=change,
            inputs_digest=apply_form.cleaned_data["inputs_digest"],
            user=request.user,
            reason=apply_form.cleaned_data["reason"],
        )
    except (Conflict, alloc.CapacityError) as error:
        context["refused"] = str(error)
        _preview_with_plan(_change(form, _kind_of(change.instance)), context)
        return None
    messages.success(
        request,
        f"Saved {change.instance} with revision {revision.number} of "
        f"{revision.datacenter.code}: {_counts(revision.diff_summary)}.",
    )
    return redirect(_detail_url(_kind_of(change.instance), change.instance))


def _kind_of(instance: Any) -> str:
    return next(kind for kind, (model, _, _) in KINDS.items() if isinstance(instance, model))


def _add_errors(form: Any, error: ValidationError) -> None:
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for name, errors in error.error_dict.items():
        form.add_error(name if name in form.fields else None, errors)


def _detail_url(kind: str, instance: Any) -> str:
    if kind == "datacenter":
        return reverse("datacenter", kwargs={"code": instance.code})
    if kind == "pool":
        return reverse("pool", kwargs={"pk": instance.pk})
    if kind == "ip":
        return reverse("ip", kwargs={"address": instance.address})
    return reverse("machine", kwargs={"hostname": instance.hostname})


@operator_required
@require_http_methods(["GET", "POST"])
def inventory_import(request: HttpRequest) -> HttpResponse:
    admin = user_rank(request.user) >= RANK[ADMIN]
    form = f.ImportForm(request.POST or None, request.FILES or None, admin=admin)
    errors: list[InventoryError] = []
    refused = ""
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        records = []
        try:
            records = parse_inventory(
                data["text"],
                fmt=data["format"],
                datacenter=data.get("datacenter") or "",
                purpose=data.get("purpose") or "",
                large_prefixes=bool(data.get("large_prefixes")),
            )
            counts = inventory.inventory_import(records=records)
        except InventoryError as error:
            # Refused whole; list every bad row, not only the first, so one fix round does.
            errors = _import_errors(records) or error.every
        except Conflict as error:  # another writer holds a datacenter: try again later
            refused = str(error)
        else:
            written = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
            messages.success(request, f"Imported {written or 'nothing'}.")
            return redirect("inventory")
    status = (409 if refused else 400) if request.method == "POST" else 200
    context = {"form": form, "errors": errors, "refused": refused}
    return page(request, "ui/import.html", context, status)


def _import_errors(records: list[Any]) -> list[InventoryError]:
    """Every bad record, or none when the check itself meets a busy datacenter."""
    if not records:
        return []
    try:
        return inventory.inventory_import_check(records=records)
    except Conflict:
        return []
