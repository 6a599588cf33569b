from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from planner.ui import views

HOSTNAME = r"(?P<hostname>[A-Za-z0-9.-]+)"
ADDRESS = r"(?P<address>[0-9A-Fa-f:.]+)"

urlpatterns = [
    path("", views.overview, name="overview"),
    path(
        "login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("datacenters/<slug:code>/", views.datacenter_detail, name="datacenter"),
    path("datacenters/<slug:code>/plan/", views.plan, name="plan"),
    path(
        "datacenters/<slug:code>/drafts/<int:number>/approve/",
        views.draft_approve,
        name="draft-approve",
    ),
    path("datacenters/<slug:code>/heatmap.json", views.heatmap_data, name="heatmap-data"),
    path(
        "datacenters/<slug:key>/edit/",
        views.inventory_edit,
        {"kind": "datacenter"},
        name="datacenter-edit",
    ),
    path("machines/", views.machine_list, name="machines"),
    re_path(rf"^machines/{HOSTNAME}/$", views.machine_detail, name="machine"),
    re_path(rf"^machines/{HOSTNAME}/state/$", views.machine_state, name="machine-state"),
    re_path(
        r"^machines/(?P<key>[A-Za-z0-9.-]+)/edit/$",
        views.inventory_edit,
        {"kind": "machine"},
        name="machine-edit",
    ),
    path("pools/<int:pk>/", views.pool_detail, name="pool"),
    path("pools/<int:key>/edit/", views.inventory_edit, {"kind": "pool"}, name="pool-edit"),
    path("ips/", views.ip_list, name="ips"),
    re_path(rf"^ips/{ADDRESS}/$", views.ip_detail, name="ip"),
    re_path(
        r"^ips/(?P<key>[0-9A-Fa-f:.]+)/edit/$",
        views.inventory_edit,
        {"kind": "ip"},
        name="ip-edit",
    ),
    path("inventory/", views.inventory_index, name="inventory"),
    path("inventory/import/", views.inventory_import, name="inventory-import"),
    re_path(
        r"^inventory/new/(?P<kind>datacenter|pool|ip|machine)/$",
        views.inventory_edit,
        name="inventory-new",
    ),
    path("search/", views.search, name="search"),
    path("revisions/", views.revisions, name="revisions"),
    path("audit/", views.audit, name="audit"),
]
