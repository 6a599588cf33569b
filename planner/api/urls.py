from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from planner.api import views

router = DefaultRouter(trailing_slash=False)
router.register("datacenters", views.DatacenterViewSet)
router.register("pools", views.EgressPoolViewSet)
router.register("ips", views.EgressIPViewSet)
router.register("machines", views.MachineViewSet)
router.register("slices", views.PortSliceViewSet)
router.register("revisions", views.PlanRevisionViewSet)

urlpatterns = [
    path("datacenters/<slug:code>/steering", views.SteeringView.as_view(), name="steering"),
    path("datacenters/<slug:code>/heatmap", views.HeatmapView.as_view(), name="heatmap"),
    path("keys", views.KeysView.as_view(), name="keys"),
    path("gateways", views.GatewayView.as_view(), name="gateways"),
    path("gateways/<str:name>", views.GatewayDetailView.as_view(), name="gateway"),
    path("geofeed.csv", views.GeofeedView.as_view(), name="geofeed"),
    *router.urls,
]
