"""The admin lists every model, with search and filters, on the demo inventory."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db

PAGES = [
    ("datacenter", "q=fra"),
    ("egresspool", "purpose__exact=warp"),
    ("egressip", "q=192.0.2.1&state__exact=active"),
    ("machine", "q=lhr1-m00&state__exact=active"),
    ("portslice", "state__exact=draining"),
    ("planrevision", "status__exact=applied"),
    ("auditentry", "action__exact=import"),
    ("signingkey", "status__exact=active"),
    ("configbundle", "status__exact=pending"),
    ("apitoken", "kind__exact=agent"),
    ("sliceusage", "q=fra1"),
    ("usagesample", "q=fra1"),
]


@pytest.fixture
def admin_client_with_demo() -> Client:
    call_command("seed_demo", stdout=open("/dev/null", "w"))  # noqa: SIM115
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("alice", password="x-Secret-1"))
    return client


@pytest.mark.parametrize(("model", "query"), PAGES)
def test_each_changelist_searches_and_filters(
    admin_client_with_demo: Client, model: str, query: str
) -> None:
    response = admin_client_with_demo.get(f"/admin/planner/{model}/?{query}")
    assert response.status_code == 200
    assert b"errornote" not in response.content


def test_a_search_finds_the_machine(admin_client_with_demo: Client) -> None:
    response = admin_client_with_demo.get("/admin/planner/machine/?q=sjc1-m007")
    assert b"sjc1-m007.example.net" in response.content
    assert b"sjc1-m008.example.net" not in response.content


def test_anonymous_users_are_sent_to_log_in() -> None:
    response = Client().get("/admin/planner/machine/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
