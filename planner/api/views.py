"""API views: thin. They parse, call a service or selector, and shape the answer."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.db import transaction
from django.db.models import Model
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from planner import charts, heatmap, selectors, steering
from planner.api import serializers as s
from planner.api.filters import (
    DatacenterFilter,
    EgressIPFilter,
    EgressPoolFilter,
    MachineFilter,
    PlanRevisionFilter,
    PortSliceFilter,
)
from planner.api.renderers import CsvRenderer, JoseRenderer, NftRenderer
from planner.choices import KeyStatus, TokenKind
from planner.inventory_io import render_geofeed
from planner.models import (
    ConfigBundle,
    Datacenter,
    EgressIP,
    EgressPool,
    Gateway,
    Machine,
    PlanRevision,
    PortSlice,
    SigningKey,
)
from planner.queries import HeatmapQuery
from planner.roles import ADMIN, OPERATOR
from planner.services import inventory, plans, rebalance
from planner.services import steering as steering_services
from planner.signing import jwks

# An IPv4 or IPv6 address in a URL path segment.
ADDRESS_IN_PATH = r"[0-9A-Fa-f:.]+"


class JsonErrors:
    """Errors are JSON whatever was negotiated (a 404 in ``?format=nft`` too)."""

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)  # type: ignore[misc]
        self.request.accepted_renderer = JSONRenderer()  # type: ignore[attr-defined]
        self.request.accepted_media_type = JSONRenderer.media_type  # type: ignore[attr-defined]
        return response


PLAN_PARAMETERS = [
    OpenApiParameter(
        "plan",
        str,
        enum=["preview", "apply"],
        description="Write this change together with the plan that drains the live slices "
        "it displaces: `preview` shows that plan and writes nothing; `apply` writes both "
        "(admin only) when `inputs_digest` still matches the preview.",
    ),
    OpenApiParameter("inputs_digest", str, description="with plan=apply: the preview's digest"),
]
SCOPE = OpenApiParameter(
    "scope",
    str,
    enum=["changed", "full"],
    description="`changed` (the default) plans only the pools an inventory change or an "
    "ended drain left dirty; `full` plans every pool of the datacenter. Preview and apply "
    "must use the same scope: the digest covers the scope's inputs.",
)
PLANNED_RESPONSES = {
    200: OpenApiResponse(
        description="with ?plan: `{preview}` for plan=preview, `{revision}` for plan=apply"
    ),
    409: OpenApiResponse(
        description="live slices would no longer fit (listed in `slices`), the object is "
        "still in use, or (plan=apply) the inputs moved since the preview"
    ),
}


class InventoryViewSet(viewsets.ModelViewSet):
    """CRUD whose writes go through :mod:`planner.services.inventory`.

    An update or delete that would displace live slices is refused (409, the
    slices named) unless it asks to be planned with: ``?plan=preview`` then
    ``?plan=apply&inputs_digest=…`` (see :class:`inventory.InventoryChange`).
    """

    def perform_create(self, serializer: BaseSerializer[Any]) -> None:
        serializer.instance = self._change(serializer, self.get_queryset().model()).write_guarded()

    def perform_update(self, serializer: BaseSerializer[Any]) -> None:
        serializer.instance = self._change(serializer, serializer.instance).write_guarded()

    def _change(self, serializer: BaseSerializer[Any], instance: Any) -> inventory.InventoryChange:
        return inventory.InventoryChange(instance, dict(serializer.validated_data))

    def perform_destroy(self, instance: Model) -> None:
        inventory.inventory_delete(instance=instance)

    @extend_schema(parameters=PLAN_PARAMETERS, responses=PLANNED_RESPONSES)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        mode = self._plan_mode()
        if mode is None:
            return super().update(request, *args, **kwargs)
        serializer = self.get_serializer(
            self.get_object(), data=request.data, partial=kwargs.get("partial", False)
        )
        serializer.is_valid(raise_exception=True)
        return self._planned(mode, self._change(serializer, serializer.instance))

    @extend_schema(parameters=PLAN_PARAMETERS, responses=PLANNED_RESPONSES)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, partial=True, **kwargs)

    @extend_schema(parameters=PLAN_PARAMETERS, responses=PLANNED_RESPONSES)
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        mode = self._plan_mode()
        if mode is None:
            return super().destroy(request, *args, **kwargs)
        return self._planned(mode, inventory.InventoryChange(self.get_object(), delete=True))

    def _plan_mode(self) -> str | None:
        mode = self.request.query_params.get("plan")
        if not mode:
            return None
        if mode not in {"preview", "apply"}:
            raise ValidationError({"plan": f"{mode[:40]!r} is not 'preview' or 'apply'."})
        return mode

    def _planned(self, mode: str, change: inventory.InventoryChange) -> Response:
        if mode == "preview":
            preview = inventory.inventory_plan_preview(change=change)
            return Response({"preview": preview.as_dict()})
        body = s.PlanApplySerializer(
            data={"inputs_digest": self.request.query_params.get("inputs_digest", "")}
        )
        body.is_valid(raise_exception=True)
        revision = inventory.inventory_plan_apply(
            change=change,
            inputs_digest=body.validated_data["inputs_digest"],
            user=self.request.user,
        )
        return Response({"revision": s.PlanRevisionSerializer(revision).data})


class DatacenterViewSet(InventoryViewSet):
    queryset = Datacenter.objects.all()
    serializer_class = s.DatacenterSerializer
    lookup_field = "code"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"  # a slug, as the steering path says
    filterset_class = DatacenterFilter
    ordering_fields = ["code", "name", "country"]
    roles = {"plan_apply": OPERATOR, "plan_preview": OPERATOR, "revision_approve": OPERATOR}

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT}, parameters=[SCOPE])
    @action(detail=True, methods=["post"], url_path="plan/preview")
    def plan_preview(self, request: Request, code: str) -> Response:
        """The diff and the capacity per pool a plan would give now; writes nothing.

        Plans the pools an inventory change or an ended drain left dirty, or every
        pool with ``?scope=full``.
        """
        preview = plans.plan_preview(datacenter=self.get_object(), full=self._full_scope())
        return Response(preview.as_dict())

    def _full_scope(self) -> bool:
        scope = self.request.query_params.get("scope", "changed")
        if scope not in {"changed", "full"}:
            raise ValidationError({"scope": f"{scope[:40]!r} is not 'changed' or 'full'."})
        return scope == "full"

    @extend_schema(
        request=s.PlanApplySerializer,
        responses={
            201: s.PlanRevisionSerializer,
            409: OpenApiResponse(
                description="the inputs changed since the preview (a fresh preview is in "
                "`preview`), or another writer held the datacenter too long"
            ),
            422: OpenApiResponse(description="a pool lacks IPs: the shortfall per pool"),
        },
        parameters=[SCOPE],
    )
    @action(detail=True, methods=["post"], url_path="plan/apply")
    def plan_apply(self, request: Request, code: str) -> Response:
        """Apply the plan a preview showed (its ``inputs_digest``): whole, or not at all.

        409 with a fresh preview when anything the plan depends on changed since.
        """
        body = s.PlanApplySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        revision = plans.plan_apply(
            datacenter=self.get_object(),
            inputs_digest=body.validated_data["inputs_digest"],
            reason=body.validated_data["reason"],
            user=request.user,
            full=self._full_scope(),
        )
        return Response(s.PlanRevisionSerializer(revision).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={
            200: s.PlanRevisionSerializer,
            404: OpenApiResponse(description="no revision with that number"),
            409: OpenApiResponse(
                description="not a draft, or its base or inputs moved on since it was drafted"
            ),
            422: OpenApiResponse(description="a pool lacks IPs: the shortfall per pool"),
        },
    )
    @action(detail=True, methods=["post"], url_path=r"revisions/(?P<number>[0-9]{1,9})/approve")
    def revision_approve(self, request: Request, code: str, number: str) -> Response:
        """Apply a draft that rebalance left (it drains live slices), as it was planned."""
        try:
            revision = rebalance.revision_approve(
                datacenter=self.get_object(), number=int(number), user=request.user
            )
        except PlanRevision.DoesNotExist:
            raise Http404(f"no revision {number} in {code}") from None
        return Response(s.PlanRevisionSerializer(revision).data)

    @extend_schema(methods=["GET"], request=None, responses={200: s.RebalancePolicySerializer})
    @extend_schema(
        methods=["PATCH"],
        request=s.RebalancePolicySerializer,
        responses={200: s.RebalancePolicySerializer},
    )
    @action(detail=True, methods=["get", "patch"], url_path="rebalance")
    def rebalance_policy(self, request: Request, code: str) -> Response:
        """The datacenter's rebalance policy (defaults until first changed)."""
        datacenter = self.get_object()
        policy = selectors.rebalance_policy(datacenter=datacenter)
        if request.method == "PATCH":
            body = s.RebalancePolicySerializer(policy, data=request.data, partial=True)
            body.is_valid(raise_exception=True)
            policy = rebalance.rebalance_policy_save(
                datacenter=datacenter, values=dict(body.validated_data)
            )
        return Response(s.RebalancePolicySerializer(policy).data)

    @extend_schema(request=None, responses={200: s.RebalanceRunSerializer(many=True)})
    @action(detail=True, methods=["get"], url_path="rebalance/runs")
    def rebalance_runs(self, request: Request, code: str) -> Response:
        """The datacenter's rebalance runs, newest first (paginated): what each saw and did."""
        page = self.paginate_queryset(selectors.rebalance_runs(datacenter=self.get_object()))
        return self.get_paginated_response(s.RebalanceRunSerializer(page, many=True).data)


class SteeringView(JsonErrors, APIView):
    """For each live slice: ``{ip, lo, hi, machine, next_hop, state}``, the machines' stable
    marks and the revision.

    ``?format=nft`` gives one re-runnable ``sh`` script for a Linux gateway doing
    the load balancer's job (see :mod:`allocator.steering`). Both carry an
    ``ETag``; a GET with ``If-None-Match`` of the current one answers 304.
    """

    renderer_classes = [JSONRenderer, NftRenderer]
    token_kinds = {"get": (TokenKind.LOAD_BALANCER,)}
    throttle_scope = "steering"

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=["json", "nft"])],
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/plain"): OpenApiTypes.STR,
            304: OpenApiResponse(description="unchanged since the ETag in If-None-Match"),
        },
    )
    def get(self, request: Request, code: str) -> Response:
        datacenter = get_object_or_404(Datacenter, code=code)
        rows = steering_services.steering_rows(datacenter=datacenter)
        revision = selectors.current_revision(datacenter=datacenter)
        document = steering.steering_document(rows, datacenter=code, revision=revision)
        etag = steering.steering_etag(document)
        if etag in request.headers.get("If-None-Match", ""):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        if request.accepted_renderer.format == "nft":
            body: Any = steering.render_script(rows, datacenter=code, revision=revision)
        else:
            body = document
        return Response(body, headers={"ETag": etag})


class GatewayView(APIView):
    """Each registered gateway: its datacenter, the steering revision it runs.

    An admin registers a gateway (``POST`` its ``name`` and ``datacenter``)
    before it acks: acks from a name nobody registered, or for another
    datacenter than its own, are refused and counted, never stored.
    """

    roles = {"post": ADMIN}

    @extend_schema(responses={200: s.GatewaySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(s.GatewaySerializer(selectors.gateways(), many=True).data)

    @extend_schema(request=s.GatewayRegisterSerializer, responses={201: s.GatewaySerializer})
    def post(self, request: Request) -> Response:
        form = s.GatewayRegisterSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        gateway = steering_services.gateway_register(
            name=form.validated_data["name"], datacenter=form.validated_data["datacenter"]
        )
        return Response(s.GatewaySerializer(gateway).data, status=status.HTTP_201_CREATED)


class GatewayDetailView(APIView):
    """One registered gateway; ``DELETE`` (admin) forgets it: its acks are refused after."""

    roles = {"delete": ADMIN}

    @extend_schema(responses={200: s.GatewaySerializer})
    def get(self, request: Request, name: str) -> Response:
        return Response(s.GatewaySerializer(get_object_or_404(Gateway, name=name)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str) -> Response:
        steering_services.gateway_unregister(gateway=get_object_or_404(Gateway, name=name))
        return Response(status=status.HTTP_204_NO_CONTENT)


class HeatmapView(JsonErrors, APIView):
    """The port-space heatmap of a datacenter: rows are egress IPs grouped by pool (or
    one row per pool with ``collapse=1``), columns port buckets over 1024-65535.

    ``figure`` is a ready Plotly figure; ``slices`` lists, per row, each slice as
    ``[row, lo, hi, machine index, state (0 active, 1 draining), drain end, use, kind]``
    with ``machines`` naming the indexes, so a dashboard can explain any cell.
    """

    @extend_schema(
        parameters=[
            OpenApiParameter("mode", str, enum=list(heatmap.MODES)),
            OpenApiParameter("pool", int, description="only this pool (id)"),
            OpenApiParameter("purpose", str),
            OpenApiParameter("country", str, description="ISO 3166-1 alpha-2"),
            OpenApiParameter("ip", str, description="only this egress IP"),
            OpenApiParameter(
                "collapse",
                str,
                enum=["auto", "1", "0"],
                description=f"one row per pool; auto collapses above {heatmap.COLLAPSE_ABOVE} IPs",
            ),
            OpenApiParameter("bucket", int, description="ports per column, 64-4096"),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request, code: str) -> Response:
        datacenter = get_object_or_404(Datacenter, code=code)
        query = HeatmapQuery(request.query_params)
        if not query.is_valid():
            raise ValidationError(query.errors.get_json_data())
        picture = heatmap.datacenter_heatmap(
            datacenter=datacenter, mode=query.chosen_mode(), filters=query.heatmap_filter()
        )
        return Response(charts.heatmap_payload(picture))


class EgressPoolViewSet(InventoryViewSet):
    queryset = EgressPool.objects.select_related("datacenter")
    serializer_class = s.EgressPoolSerializer
    filterset_class = EgressPoolFilter
    ordering_fields = ["id", "purpose", "country"]

    @extend_schema(request=None, responses={200: s.PoolForecastSerializer})
    @action(detail=True, methods=["get"])
    def forecast(self, request: Request, pk: str) -> Response:
        """When the pool runs out of free slots and how many IPs it needs by the horizon,
        from its usage history and its machines' joins (docs/design.md)."""
        pool = self.get_object()
        outlook = selectors.pool_outlook(pool=pool)
        return Response(s.PoolForecastSerializer({"pool": pool.key, **outlook.as_dict()}).data)


class EgressIPViewSet(InventoryViewSet):
    queryset = EgressIP.objects.all()
    serializer_class = s.EgressIPSerializer
    lookup_field = "address"
    lookup_value_regex = ADDRESS_IN_PATH
    filterset_class = EgressIPFilter
    ordering_fields = ["address", "state"]

    def get_object(self) -> EgressIP:
        try:
            ipaddress.ip_address(self.kwargs["address"])
        except ValueError:
            raise Http404(f"{self.kwargs['address']!r} is not an IP address") from None
        return super().get_object()


class MachineViewSet(JsonErrors, InventoryViewSet):
    queryset = selectors.machines_with_bundle_status(
        Machine.objects.select_related("datacenter").prefetch_related("pools")
    )
    serializer_class = s.MachineSerializer
    lookup_field = "hostname"
    lookup_value_regex = r"[A-Za-z0-9.-]+"
    filterset_class = MachineFilter
    ordering_fields = ["hostname", "state", "last_seen"]
    token_kinds = {"bundle": (TokenKind.AGENT,)}
    throttle_scope: str | None = None  # the bundle action sets "bundle"

    def _change(self, serializer: BaseSerializer[Any], instance: Any) -> inventory.InventoryChange:
        values = dict(serializer.validated_data)
        pools = values.pop("pools", None)
        return inventory.InventoryChange(instance, values, None if pools is None else list(pools))

    @extend_schema(responses={(200, "application/jose"): OpenApiTypes.STR})
    @action(
        detail=True,
        methods=["get"],
        renderer_classes=[JoseRenderer, JSONRenderer],
        throttle_scope="bundle",
    )
    def bundle(self, request: Request, hostname: str) -> Response:
        """The machine's latest signed bundle (JWS compact, ``application/jose``)."""
        machine = get_object_or_404(Machine, hostname=hostname)
        bundle = ConfigBundle.objects.filter(machine=machine).order_by("-serial").first()
        if bundle is None:
            return Response({"detail": f"No bundle signed for {hostname} yet."}, status=404)
        if request.accepted_renderer.format == "jose":
            return Response(bundle.token)
        return Response({"serial": bundle.serial, "status": bundle.status, "token": bundle.token})


class PortSliceViewSet(viewsets.ReadOnlyModelViewSet):
    # A revision's diff summary can name thousands of machines: not per slice row.
    queryset = PortSlice.objects.select_related(
        "ip__pool__datacenter", "machine", "revision"
    ).defer("revision__diff_summary")
    serializer_class = s.PortSliceSerializer
    filterset_class = PortSliceFilter
    ordering_fields = ["id", "lo", "state"]


class PlanRevisionViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    queryset = PlanRevision.objects.select_related("datacenter", "created_by")
    serializer_class = s.PlanRevisionSerializer
    filterset_class = PlanRevisionFilter
    ordering_fields = ["number", "created_at"]


class KeysView(APIView):
    """The public keys agents verify bundles with (RFC 7517 JWKS): active and published."""

    token_kinds = {"get": (TokenKind.AGENT,)}

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        keys = SigningKey.objects.filter(status__in=[KeyStatus.ACTIVE, KeyStatus.PUBLISHED])
        return Response(jwks([key.public_jwk for key in keys]))


class GeofeedView(JsonErrors, APIView):
    """The egress IPs as an RFC 8805 geofeed. Public: geolocation providers fetch it."""

    renderer_classes = [CsvRenderer]
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    @extend_schema(
        parameters=[s.GeofeedQuerySerializer], responses={(200, "text/csv"): OpenApiTypes.STR}
    )
    def get(self, request: Request) -> Response:
        query = s.GeofeedQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        with transaction.atomic():
            entries = selectors.geofeed_entries(datacenter=query.validated_data.get("datacenter"))
        return Response(render_geofeed(entries, comment="portslice egress geofeed (RFC 8805)"))
