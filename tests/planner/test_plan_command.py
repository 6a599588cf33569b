from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from planner.models import EgressIP, Machine, PlanRevision, PortSlice
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("plan", *args, stdout=out)
    return out.getvalue()


def _site(machines: int) -> None:
    dc = make_datacenter(code="lhr1", country="GB")
    pool = make_pool(datacenter=dc, country="GB", slice_size=32768)  # 1 slot per IP
    make_ip("198.51.100.1", pool=pool)
    for n in range(machines):
        make_machine(f"h{n}.example.net", datacenter=dc).pools.add(pool)


def test_it_prints_the_diff_and_capacity_without_writing() -> None:
    _site(machines=1)
    out = _run("lhr1")
    assert "based on revision 0" in out and "1 added" in out
    assert "lhr1/warp/GB" in out
    assert not PortSlice.objects.exists()


def test_apply_writes_and_json_is_parseable() -> None:
    _site(machines=1)
    _run("lhr1", "--apply")
    assert PlanRevision.objects.get().number == 1
    data = json.loads(_run("lhr1", "--full", "--json"))
    assert data["base_revision"] == 1 and data["diff"]["kept"] == 1
    assert data["scope"] == "full" and data["pools_planned"] == ["lhr1/warp/GB"]
    assert len(data["inputs_digest"]) == 64
    assert data["capacity"]["lhr1/warp/GB"]["slots_free"] == 0


def test_it_plans_only_the_changed_pools_unless_full() -> None:
    _site(machines=1)
    _run("lhr1", "--apply")
    assert json.loads(_run("lhr1", "--json"))["pools_planned"] == []
    assert "planned: 0 changed pool(s)" in _run("lhr1")
    assert "planned: every pool" in _run("lhr1", "--full")
    Machine.objects.filter(hostname="h0.example.net").update(state="retired")
    data = json.loads(_run("lhr1", "--json"))
    assert data["pools_planned"] == ["lhr1/warp/GB"] and data["diff"]["draining"] == 1


def test_apply_with_an_old_digest_is_refused_when_the_inputs_moved() -> None:
    _site(machines=1)
    seen = json.loads(_run("lhr1", "--json"))["inputs_digest"]
    _run("lhr1", "--apply")  # someone else applies first
    with pytest.raises(CommandError, match="changed since this preview"):
        _run("lhr1", "--apply", "--digest", seen)
    assert PlanRevision.objects.count() == 1


def test_a_shortfall_names_the_ips_needed_and_fails() -> None:
    _site(machines=3)
    with pytest.raises(CommandError, match="not enough IPs"):
        _run("lhr1", "--apply")
    data = json.loads(_run_json_allowing_failure())
    (shortfall,) = data["shortfalls"]
    assert shortfall["ips_needed"] == 2
    assert "you need at least 2 more IP addresses" in shortfall["message"]
    assert not PortSlice.objects.exists()
    assert EgressIP.objects.count() == 1


def _run_json_allowing_failure() -> str:
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("plan", "lhr1", "--json", stdout=out)
    return out.getvalue()


def test_an_unknown_datacenter_is_named() -> None:
    with pytest.raises(CommandError, match="no datacenter with code 'nope'"):
        _run("nope")
