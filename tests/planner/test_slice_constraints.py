"""Two live slices on one IP never overlap: the database and model validation both refuse."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from planner import constants
from planner.models import PortSlice
from tests.planner.factories import make_ip, make_machine, make_slice

pytestmark = pytest.mark.django_db(transaction=True)


def _raw_insert(ip_id: int, machine_id: int, lo: int, hi: int) -> None:
    # Straight SQL: no model validation, no service, nothing but the database.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO planner_portslice (ip_id, machine_id, lo, hi, state) "
            "VALUES (%s, %s, %s, %s, 'active')",
            [ip_id, machine_id, lo, hi],
        )


def test_it_refuses_an_overlapping_raw_insert_on_postgres(postgres: None) -> None:
    ip, machine = make_ip(), make_machine()
    _raw_insert(ip.pk, machine.pk, 2048, 4095)
    with pytest.raises(IntegrityError, match="slice_no_overlap_per_ip"), transaction.atomic():
        _raw_insert(ip.pk, machine.pk, 4095, 6000)
    assert PortSlice.objects.count() == 1


def test_it_refuses_an_overlapping_bulk_create_on_postgres(postgres: None) -> None:
    ip, machine = make_ip(), make_machine()
    with pytest.raises(IntegrityError), transaction.atomic():
        PortSlice.objects.bulk_create(
            [
                PortSlice(ip=ip, machine=machine, lo=1024, hi=2047),
                PortSlice(ip=ip, machine=machine, lo=2000, hi=3000, state="draining"),
            ]
        )
    assert not PortSlice.objects.exists()


def test_it_accepts_adjacent_raw_inserts_on_postgres(postgres: None) -> None:
    ip, machine = make_ip(), make_machine()
    _raw_insert(ip.pk, machine.pk, 2048, 4095)
    _raw_insert(ip.pk, machine.pk, 4096, 6143)  # hi + 1 == lo
    assert PortSlice.objects.count() == 2


def test_it_lets_different_ips_use_the_same_ports_on_postgres(postgres: None) -> None:
    machine = make_machine()
    first, second = make_ip("192.0.2.10"), make_ip("192.0.2.11")
    _raw_insert(first.pk, machine.pk, 2048, 4095)
    _raw_insert(second.pk, machine.pk, 2048, 4095)
    assert PortSlice.objects.count() == 2


def test_it_refuses_lo_above_hi_in_the_database() -> None:
    ip, machine = make_ip(), make_machine()
    with pytest.raises(IntegrityError), transaction.atomic():
        _raw_insert(ip.pk, machine.pk, 5000, 4000)


def test_validation_refuses_an_overlap_on_any_database() -> None:
    ip, machine = make_ip(), make_machine()
    make_slice(ip=ip, machine=machine, lo=2048, hi=4095)
    with pytest.raises(ValidationError) as caught:
        make_slice(ip=ip, machine=machine, lo=3000, hi=3000, state="draining")
    assert constants.ERR_SLICE_OVERLAP in str(caught.value)
    assert PortSlice.objects.count() == 1


def test_validation_accepts_adjacent_slices() -> None:
    ip, machine = make_ip(), make_machine()
    make_slice(ip=ip, machine=machine, lo=2048, hi=4095)
    make_slice(ip=ip, machine=machine, lo=4096, hi=6143)
    assert list(PortSlice.objects.values_list("lo", flat=True)) == [2048, 4096]


def test_validation_refuses_a_slice_outside_the_usable_range() -> None:
    ip, machine = make_ip(usable_lo=2048, usable_hi=8191), make_machine()
    with pytest.raises(ValidationError) as caught:
        make_slice(ip=ip, machine=machine, lo=1024, hi=2047)
    assert "lo" in caught.value.message_dict


def test_validation_refuses_lo_above_hi() -> None:
    ip, machine = make_ip(), make_machine()
    with pytest.raises(ValidationError) as caught:
        make_slice(ip=ip, machine=machine, lo=3000, hi=2999)
    assert "hi" in caught.value.message_dict
