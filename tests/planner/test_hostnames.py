"""Host names are ASCII letters, digits and hyphens, on every path in (finding 8 of
issue 15): the API, the import and the contract refuse look-alike Unicode names that
case folding used to let through, with one check shared by planner and contract."""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.test import APIClient

import contract
from planner.models import Gateway, Machine
from planner.validators import validate_hostname
from tests.planner.conftest import Site

LOOK_ALIKES = ["m9.\u017fite.net", "m10.\u0131n.net", "K\u212aLVIN.example.net"]
GOOD = ["edge0.fra1.example.net", "EDGE-1.example.net", "xn--bcher-kva.example", "a"]
BAD = ["-edge.example.net", "edge-.example.net", "a..b", "edge\n", "ab--cd.example", "x" * 64]


@pytest.mark.parametrize("name", LOOK_ALIKES + BAD)
def test_it_refuses_the_name_on_both_sides(name: str) -> None:
    assert contract.hostname_problem(name) is not None
    with pytest.raises(ValidationError) as refused:
        validate_hostname(name)
    assert repr(name) in refused.value.messages[0]
    message = contract.usage_message(hostname="edge0.example.net", serial=0, at=1.0, slices=[])
    with pytest.raises(contract.ContractError) as refused_report:
        contract.validate_usage({**message, "hostname": name})
    assert refused_report.value.field == "hostname"


@pytest.mark.parametrize("name", GOOD)
def test_it_accepts_ldh_names_and_a_labels(name: str) -> None:
    assert contract.hostname_problem(name) is None
    validate_hostname(name)
    validate_hostname(name + ".")  # the absolute form; the model strips the dot


@given(st.text(max_size=30))
def test_anything_the_check_accepts_is_plain_ascii_ldh(name: str) -> None:
    if contract.is_hostname(name):
        assert name.isascii() and set(name.lower()) <= set("abcdefghijklmnopqrstuvwxyz0123456789-.")


@pytest.mark.django_db
@pytest.mark.parametrize("name", LOOK_ALIKES[:2])
def test_the_api_refuses_a_look_alike_machine_with_a_field_error(
    clients: dict[str, APIClient], site: Site, name: str
) -> None:
    body = {"hostname": name, "datacenter": "fra1", "address": "10.9.0.99"}
    response = clients["bob"].post("/api/v1/machines", body, format="json")
    assert response.status_code == 400 and "hostname" in response.json()
    assert not Machine.objects.filter(address="10.9.0.99").exists()


@pytest.mark.django_db
def test_the_import_refuses_a_look_alike_machine(site: Site, tmp_path: Path) -> None:
    document: dict[str, list[dict[str, Any]]] = {
        "machines": [{"hostname": "m9.\u017fite.net", "datacenter": "fra1", "address": "10.9.0.98"}]
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CommandError, match="hostname"):
        call_command("import_inventory", str(path), stdout=io.StringIO())
    assert not Machine.objects.filter(address="10.9.0.98").exists()


@pytest.mark.django_db
def test_the_migration_reports_bad_rows_and_keeps_them(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    # Rows written before the check (update() skips validation), as an old database holds them.
    Machine.objects.filter(pk=site.machines[0].pk).update(hostname="m9.\u017fite.net")
    Gateway.objects.create(name="{'a': 1}", datacenter=site.datacenter)
    migration = importlib.import_module("planner.migrations.0008_hostile_input")
    migration.report_bad_names(apps, None)
    out = capsys.readouterr().out
    assert "2 name(s) the contract refuses" in out
    assert "'m9.\u017fite.net': not ASCII" in out and "\"{'a': 1}\"" in out
    assert Machine.objects.filter(hostname="m9.\u017fite.net").exists()
    assert Gateway.objects.filter(name="{'a': 1}").exists()
