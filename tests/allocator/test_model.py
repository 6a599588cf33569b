"""Validation of the allocator's input types."""

from __future__ import annotations

import pytest

from allocator import EgressIP, Machine, PolicyError, PoolPolicy, Slice, validate_policy


def test_it_accepts_the_default_policy() -> None:
    assert validate_policy(PoolPolicy()) == PoolPolicy(2048, 1, None)


@pytest.mark.parametrize(
    ("policy", "field", "named"),
    [
        (PoolPolicy(slice_size=0), "slice_size", "slice_size=0"),
        (PoolPolicy(slice_size=64513), "slice_size", "slice_size=64513"),
        (PoolPolicy(slices_per_machine=0), "slices_per_machine", "slices_per_machine=0"),
        (
            PoolPolicy(slices_per_machine=3, max_slices_per_machine=2),
            "max_slices_per_machine",
            "max_slices_per_machine=2",
        ),
    ],
)
def test_it_names_the_field_and_value_of_a_bad_policy(
    policy: PoolPolicy, field: str, named: str
) -> None:
    with pytest.raises(PolicyError, match=named) as caught:
        validate_policy(policy)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


def test_it_allows_the_whole_usable_range_as_one_slice() -> None:
    validate_policy(PoolPolicy(slice_size=64512))


def test_it_refuses_unknown_states() -> None:
    with pytest.raises(ValueError, match="state='gone'"):
        EgressIP("10.0.0.1", "p", state="gone")
    with pytest.raises(ValueError, match="state='paused'"):
        Machine("m", frozenset({"p"}), state="paused")
    with pytest.raises(ValueError, match="state='retired'"):
        Slice("10.0.0.1", 2048, 4095, "m", state="retired")


def test_it_refuses_a_weightless_machine() -> None:
    with pytest.raises(ValueError, match="weight=0"):
        Machine("m", frozenset({"p"}), weight=0)


def test_it_refuses_bad_slice_bounds_and_reserved_ports() -> None:
    with pytest.raises(ValueError, match="lo=5000 is above hi=4095"):
        Slice("10.0.0.1", 5000, 4095, "m")
    with pytest.raises(ValueError, match="reserved port 70000"):
        EgressIP("10.0.0.1", "p", reserved=frozenset({70000}))


def test_it_describes_a_slice() -> None:
    slice_ = Slice("10.0.0.1", 2048, 4095, "web-1")
    assert str(slice_) == "10.0.0.1:2048-4095 (web-1, active)"
    assert slice_.size == 2048 and slice_.ports.size == 2048
