"""inventory_import_check: every bad record of an import, and nothing written."""

from __future__ import annotations

import pytest

from planner.inventory_io import parse_inventory
from planner.models import AuditEntry, Datacenter, EgressPool, Machine
from planner.services.inventory import inventory_import_check

pytestmark = pytest.mark.django_db

DOCUMENT = """{
  "datacenters": [{"code": "ams1", "name": "Amsterdam", "country": "NL"},
                  {"code": "bad dc", "name": "x", "country": "NL"}],
  "pools": [{"datacenter": "ams1", "purpose": "warp", "country": "XX"}],
  "machines": [{"hostname": "ok.ams1.example.net", "datacenter": "ams1", "address": "10.1.0.2"},
               {"hostname": "m_2", "datacenter": "ams1", "address": "10.1.0.3"}]
}"""


def test_it_lists_every_bad_record_and_writes_nothing() -> None:
    errors = inventory_import_check(records=parse_inventory(DOCUMENT))
    assert [(e.where, e.field) for e in errors] == [
        ("datacenters[1]", "code"),
        ("pools[0]", "country"),
        ("machines[1]", "hostname"),
    ]
    assert "XX" in str(errors[1])
    assert not Datacenter.objects.exists() and not EgressPool.objects.exists()
    assert not Machine.objects.exists() and not AuditEntry.objects.exists()


def test_a_good_file_has_no_errors() -> None:
    good = DOCUMENT.replace('"bad dc"', '"ams2"').replace("XX", "NL").replace("m_2", "m2.x.net")
    assert inventory_import_check(records=parse_inventory(good)) == []
    assert not Datacenter.objects.exists()


THREE_WRONG = """{
  "datacenters": [{"code": "ams1", "name": "Amsterdam", "country": "NL"}],
  "machines": [{"hostname": "m_3", "datacenter": "ams1", "address": "10.1.0.9",
                "state": "sideways",
                "weight": 0, "colour": "red"}]
}"""


def test_it_reports_every_wrong_field_of_one_record() -> None:
    errors = inventory_import_check(records=parse_inventory(THREE_WRONG))
    # The unknown field is refused before the model checks the rest.
    assert [(e.where, e.field, e.value) for e in errors] == [("machines[0]", "colour", "red")]
    known = THREE_WRONG.replace(', "colour": "red"', "")
    errors = inventory_import_check(records=parse_inventory(known))
    assert {e.where for e in errors} == {"machines[0]"}
    wrong = {e.field: e.value for e in errors}
    assert wrong == {"hostname": "m_3", "state": "sideways", "weight": 0}
    assert not Machine.objects.exists()
