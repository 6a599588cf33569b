"""import_inventory and export_geofeed: whole files in, valid RFC 8805 out."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from planner.models import AuditEntry, Datacenter, EgressIP, EgressPool, Machine
from tests.planner.factories import make_datacenter

pytestmark = pytest.mark.django_db

GEOFEED = """\
# portslice test feed
192.0.2.1/32,DE,DE-HE,Frankfurt am Main,
192.0.2.4/30,DE,DE-HE,Frankfurt am Main,
192.0.2.9/32,FR,,,
2001:db8::1/128,NL,NL-NH,Amsterdam,
"""


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _rows(feed: str) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(feed)) if row and not row[0].startswith("#")]


def _file(tmp_path: Path, text: str, name: str = "inventory") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_geofeed_round_trips_through_export(tmp_path: Path) -> None:
    make_datacenter(code="fra1")
    _run("import_inventory", _file(tmp_path, GEOFEED), "--datacenter", "fra1", "--purpose", "warp")
    assert EgressIP.objects.count() == 1 + 4 + 1 + 1
    assert EgressPool.objects.count() == 3
    assert _rows(_run("export_geofeed")) == _rows(GEOFEED)


def test_the_export_can_be_limited_to_a_datacenter(tmp_path: Path) -> None:
    make_datacenter(code="fra1"), make_datacenter(code="lhr1", country="GB")
    feed = _file(tmp_path, GEOFEED)
    _run("import_inventory", feed, "--datacenter", "fra1", "--purpose", "warp")
    _run(
        "import_inventory",
        _file(tmp_path, "198.51.100.1/32,GB,,London,\n", "gb"),
        "--datacenter",
        "lhr1",
        "--purpose",
        "cdn",
    )
    assert _rows(_run("export_geofeed", "--datacenter", "lhr1")) == [
        ["198.51.100.1/32", "GB", "", "London", ""]
    ]


def test_one_bad_row_imports_nothing_and_names_line_field_value(tmp_path: Path) -> None:
    make_datacenter(code="fra1")
    bad = GEOFEED + "192.0.2.20/32,XX,,,\n"
    with pytest.raises(CommandError) as caught:
        _run("import_inventory", _file(tmp_path, bad), "--datacenter", "fra1", "--purpose", "warp")
    message = str(caught.value)
    assert "line 6" in message and "'country'" in message and "'XX'" in message
    assert not EgressIP.objects.exists() and not EgressPool.objects.exists()
    assert not AuditEntry.objects.filter(model="planner.EgressIP").exists()


def test_a_bad_prefix_names_the_line(tmp_path: Path) -> None:
    make_datacenter(code="fra1")
    with pytest.raises(CommandError, match=r"line 2: field 'ip_prefix', value '192.0.2.1/24'"):
        _run(
            "import_inventory",
            _file(tmp_path, "192.0.2.9/32,DE,,,\n192.0.2.1/24,DE,,,\n"),
            "--datacenter",
            "fra1",
            "--purpose",
            "warp",
        )
    assert not EgressIP.objects.exists()


def test_a_geofeed_needs_a_datacenter_and_purpose(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="datacenter"):
        _run("import_inventory", _file(tmp_path, GEOFEED))


JSON_INVENTORY: dict[str, list[dict[str, Any]]] = {
    "datacenters": [{"code": "lhr1", "name": "London 1", "country": "GB", "region": "GB-LND"}],
    "pools": [{"datacenter": "lhr1", "purpose": "warp", "country": "GB", "slice_size": 4096}],
    "ips": [
        {
            "datacenter": "lhr1",
            "purpose": "warp",
            "country": "GB",
            "address": "198.51.100.1",
            "reserved_ports": [3128],
        }
    ],
    "machines": [
        {
            "hostname": "lhr1-m001.example.net",
            "datacenter": "lhr1",
            "address": "10.2.0.2",
            "pools": ["lhr1/warp/GB"],
            "weight": 2,
        }
    ],
}


def test_a_json_inventory_creates_everything(tmp_path: Path) -> None:
    _run("import_inventory", _file(tmp_path, json.dumps(JSON_INVENTORY)))
    machine = Machine.objects.get()
    assert machine.weight == 2 and [p.key for p in machine.pools.all()] == ["lhr1/warp/GB"]
    assert EgressPool.objects.get().slice_size == 4096
    assert EgressIP.objects.get().reserved_ports == [3128]


def test_a_json_import_is_idempotent(tmp_path: Path) -> None:
    path = _file(tmp_path, json.dumps(JSON_INVENTORY))
    _run("import_inventory", path)
    _run("import_inventory", path)
    assert (Datacenter.objects.count(), EgressIP.objects.count(), Machine.objects.count()) == (
        1,
        1,
        1,
    )


def test_a_bad_json_item_names_its_place(tmp_path: Path) -> None:
    bad = {**JSON_INVENTORY, "machines": [{**JSON_INVENTORY["machines"][0], "pools": ["nope"]}]}
    with pytest.raises(CommandError, match=r"machines\[0\]: field 'pools', value 'nope'"):
        _run("import_inventory", _file(tmp_path, json.dumps(bad)))
    assert not Datacenter.objects.exists()


def test_an_unknown_field_is_refused(tmp_path: Path) -> None:
    bad = {"datacenters": [{"code": "x1", "name": "X", "country": "DE", "colour": "red"}]}
    with pytest.raises(CommandError, match="field 'colour', value 'red': unknown field"):
        _run("import_inventory", _file(tmp_path, json.dumps(bad)))


def test_csv_inventories_of_ips_and_machines(tmp_path: Path) -> None:
    make_datacenter(code="sjc1", country="US")
    ips = (
        "datacenter,purpose,country,region,city,address,usable_lo,usable_hi,reserved_ports\n"
        "# a comment line\n"
        "sjc1,cdn,US,US-CA,San Jose,203.0.113.5,2048,65535,3128;5000-5001\n"
    )
    machines = (
        "hostname,datacenter,address,pools,weight\n"
        "sjc1-a.example.net,sjc1,10.3.0.2,sjc1/cdn/US/US-CA/San Jose,1\n"
    )
    _run("import_inventory", _file(tmp_path, ips, "ips.csv"))
    _run("import_inventory", _file(tmp_path, machines, "machines.csv"))
    ip = EgressIP.objects.get()
    assert (ip.usable_lo, ip.reserved_ports) == (2048, [3128, 5000, 5001])
    assert Machine.objects.get().pools.get() == ip.pool


def test_a_bad_csv_row_names_its_file_line(tmp_path: Path) -> None:
    make_datacenter(code="sjc1", country="US")
    ips = (
        "datacenter,purpose,country,address,usable_lo\n"
        "# comment\n"
        "sjc1,cdn,US,203.0.113.5,2048\n"
        "sjc1,cdn,US,203.0.113.6,80\n"
    )
    with pytest.raises(CommandError, match=r"line 4: field 'usable_lo', value '80'"):
        _run("import_inventory", _file(tmp_path, ips, "ips.csv"))
    assert not EgressIP.objects.exists()


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="No such file"):
        _run("import_inventory", str(tmp_path / "absent.json"))


@pytest.mark.parametrize(
    ("section", "field"),
    [("datacenters", "code"), ("datacenters", "name"), ("machines", "pools")],
)
def test_it_refuses_a_nul_byte_naming_the_place(tmp_path: Path, section: str, field: str) -> None:
    item = dict(JSON_INVENTORY[section][0])
    item[field] = ["lhr1/warp/GB\x00"] if field == "pools" else "lhr1\x00"
    bad = {**JSON_INVENTORY, section: [item]}
    with pytest.raises(CommandError, match=rf"{section}\[0\]: field '{field}'.*NUL byte"):
        _run("import_inventory", _file(tmp_path, json.dumps(bad)))
    assert not Datacenter.objects.exists()


def test_it_refuses_json_nested_too_deeply(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="nested too deeply"):
        _run("import_inventory", _file(tmp_path, '{"datacenters": ' + "[" * 100_000))


def test_a_json_pool_may_be_aligned_and_a_bad_value_is_named(tmp_path: Path) -> None:
    pool = {**JSON_INVENTORY["pools"][0], "aligned": True}
    _run("import_inventory", _file(tmp_path, json.dumps({**JSON_INVENTORY, "pools": [pool]})))
    assert EgressPool.objects.get().aligned is True
    bad = {**JSON_INVENTORY, "pools": [{**pool, "aligned": "maybe"}]}
    with pytest.raises(CommandError, match=r"pools\[0\]: field 'aligned', value 'maybe'"):
        _run("import_inventory", _file(tmp_path, json.dumps(bad), "bad"))
    assert EgressPool.objects.get().aligned is True
