"""Inventory: where egress IPs live, what they are for, and who may use them."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import (
    MaxValueValidator,
    MinValueValidator,
    ProhibitNullCharactersValidator,
)
from django.db import models
from django.utils import timezone

from planner import constants
from planner.choices import IPState, MachineState
from planner.validators import (
    validate_country,
    validate_host_address,
    validate_hostname,
    validate_region,
    validate_region_in_country,
    validate_usable_port,
)


def refuse_datacenter_move(instance: models.Model, *, field: str, path: str, new: Any) -> None:
    """A stored pool, IP or machine stays in its datacenter.

    Its slices, bundles and steering all belong to that datacenter; moving it
    would hand them to another site's plan. Retire it and create it anew.
    """
    if instance.pk is None or new is None:
        return
    stored = type(instance)._default_manager.filter(pk=instance.pk).values_list(path, flat=True)
    old = stored.first()
    if old is not None and old != new:
        raise ValidationError(
            {field: ValidationError(constants.ERR_DATACENTER_MOVE, code="datacenter_move")}
        )


class NulFreeText(models.Model):
    """Every text field refuses NUL, as a field error, before anything queries with it.

    PostgreSQL cannot store NUL in text; without this, the uniqueness checks
    that follow field validation would send it and fail with ``DataError``.
    (DRF's and Django's form ``CharField`` refuse it too; imports rely on this.)
    """

    class Meta:
        abstract = True

    def clean_fields(self, exclude: Any = None) -> None:
        errors: dict[str, Any] = {}
        refuse = ProhibitNullCharactersValidator()
        for field in self._meta.concrete_fields:
            value = getattr(self, field.attname)
            if isinstance(value, str) and not (exclude and field.name in exclude):
                try:
                    refuse(value)
                except ValidationError as error:
                    errors[field.name] = error.error_list
        try:
            super().clean_fields(exclude={*(exclude or ()), *errors})
        except ValidationError as error:
            errors = error.update_error_dict(errors)
        if errors:
            raise ValidationError(errors)


class GeoFields(NulFreeText):
    """The RFC 8805 geolocation a datacenter or a pool carries."""

    country = models.CharField(
        max_length=2, validators=[validate_country], help_text="ISO 3166-1 alpha-2, e.g. DE"
    )
    region = models.CharField(
        max_length=6,
        blank=True,
        validators=[validate_region],
        help_text="ISO 3166-2 subdivision, e.g. DE-HE",
    )
    city = models.CharField(max_length=100, blank=True)

    class Meta:
        abstract = True

    def clean(self) -> None:
        validate_region_in_country(region=self.region, country=self.country)


class Datacenter(GeoFields):
    """A site whose machines share the egress IPs of its pools."""

    code = models.SlugField(max_length=32, unique=True, help_text="Short code, e.g. fra1")
    name = models.CharField(max_length=100)
    marks_issued = models.PositiveIntegerField(
        default=0,
        editable=False,
        help_text="Steering marks handed out so far: the next machine gets the next one",
    )

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


def pool_key(code: str, purpose: str, country: str, region: str, city: str) -> str:
    """A pool's name from its fields: what :attr:`EgressPool.key` says, for rows read
    with ``values_list`` (no model instance, no datacenter fetched per pool)."""
    return "/".join([code, purpose, country, *(part for part in (region, city) if part)])


class EgressPool(GeoFields):
    """The egress IPs of one datacenter for one purpose and one geolocation.

    Every IP in a pool carries the pool's geo identity; the slice policy
    (size and count per machine) is per pool.
    """

    datacenter = models.ForeignKey(Datacenter, on_delete=models.PROTECT, related_name="pools")
    purpose = models.SlugField(max_length=32, help_text="Traffic class, e.g. warp, cdn, internal")
    slice_size = models.PositiveIntegerField(
        default=2048,
        validators=[MinValueValidator(1), MaxValueValidator(constants.USABLE_PORT_COUNT)],
    )
    slices_per_machine = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)]
    )
    max_slices_per_machine = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    # Set by every inventory write that may change this pool's plan, cleared by
    # the apply that plans it: a scoped plan covers only such pools (docs/design.md).
    plan_dirty = models.BooleanField(
        default=True,
        editable=False,
        help_text="An inventory change since its last plan: the next scoped plan covers it",
    )
    # Bumped by the database on every committed change to an input of this pool's
    # plan (planner/plan_triggers.py): a preview's digest is over these.
    plan_version = models.BigIntegerField(
        default=0,
        editable=False,
        help_text="Bumped by every change to an input of this pool's plan, its slices included",
    )
    # Which transaction and statement last bumped plan_version (PostgreSQL): one
    # bump per pool and statement however many rows the statement writes.
    plan_stamp = models.CharField(max_length=64, blank=True, default="", editable=False)
    aligned = models.BooleanField(
        default=False,
        help_text=(
            "Each machine gets one contiguous port range, the same on every IP of the pool, "
            "so unmodified programs can egress from it (agent exact-range mode). The pool "
            "then serves at most as many machines as one IP has slices."
        ),
    )

    class Meta:
        ordering = ["datacenter__code", "purpose", "country"]
        constraints = [
            models.UniqueConstraint(
                fields=["datacenter", "purpose", "country", "region", "city"],
                name="pool_unique_geo_purpose",
            ),
        ]

    def __str__(self) -> str:
        return self.key

    def _refuse_key_clash(self) -> None:
        # The key leaves out an empty region or city, so ("NL-NH", "") and
        # ("", "NL-NH") would name one pool: the allocator would merge them.
        if self.datacenter_id is None:
            return
        others = EgressPool.objects.filter(datacenter_id=self.datacenter_id, purpose=self.purpose)
        if any(other.key == self.key for other in others.exclude(pk=self.pk)):
            raise ValidationError({"city": constants.ERR_POOL_KEY % {"key": self.key}})

    @property
    def key(self) -> str:
        """The pool's name as the allocator and the bundles know it."""
        return pool_key(self.datacenter.code, self.purpose, self.country, self.region, self.city)

    def clean(self) -> None:
        super().clean()
        refuse_datacenter_move(
            self, field="datacenter", path="datacenter_id", new=self.datacenter_id
        )
        self._refuse_key_clash()
        maximum = self.max_slices_per_machine
        if maximum is not None and maximum < self.slices_per_machine:
            raise ValidationError(
                {
                    "max_slices_per_machine": (
                        f"max_slices_per_machine {maximum} is below "
                        f"slices_per_machine {self.slices_per_machine}."
                    )
                }
            )


class EgressIP(NulFreeText):
    """One shared egress address and the part of its port space we may hand out."""

    address = models.GenericIPAddressField(unique=True, validators=[validate_host_address])
    pool = models.ForeignKey(EgressPool, on_delete=models.PROTECT, related_name="ips")
    usable_lo = models.PositiveIntegerField(
        default=constants.USABLE_LO, validators=[validate_usable_port]
    )
    usable_hi = models.PositiveIntegerField(
        default=constants.USABLE_HI, validators=[validate_usable_port]
    )
    reserved_ports = models.JSONField(
        default=list, blank=True, help_text="Ports inside the usable range never handed out"
    )
    state = models.CharField(max_length=16, choices=IPState.choices, default=IPState.ACTIVE)

    class Meta:
        verbose_name = "egress IP"
        ordering = ["address"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(usable_lo__lte=models.F("usable_hi")),
                name="egressip_usable_lo_le_hi",
                violation_error_message="usable_lo is above usable_hi.",
            ),
        ]

    def __str__(self) -> str:
        return self.address

    def clean(self) -> None:
        if self.pool_id is not None:
            refuse_datacenter_move(
                self, field="pool", path="pool__datacenter_id", new=self.pool.datacenter_id
            )
        if (
            isinstance(self.usable_lo, int)
            and isinstance(self.usable_hi, int)
            and self.usable_lo > self.usable_hi
        ):
            raise ValidationError(
                {
                    "usable_hi": ValidationError(
                        constants.ERR_USABLE_ORDER,
                        code="usable_order",
                        params={"lo": self.usable_lo, "hi": self.usable_hi},
                    )
                }
            )
        self._clean_reserved_ports()

    def _clean_reserved_ports(self) -> None:
        ports: Any = self.reserved_ports
        if not isinstance(ports, list):
            raise ValidationError({"reserved_ports": "Expected a list of port numbers."})
        if len(ports) > constants.MAX_RESERVED_PORTS:
            raise ValidationError(
                {
                    "reserved_ports": ValidationError(
                        constants.ERR_RESERVED_COUNT,
                        code="reserved_count",
                        params={"count": len(ports), "limit": constants.MAX_RESERVED_PORTS},
                    )
                }
            )
        for port in ports:
            if not (isinstance(port, int) and self.usable_lo <= port <= self.usable_hi):
                raise ValidationError(
                    {
                        "reserved_ports": ValidationError(
                            constants.ERR_RESERVED,
                            code="reserved",
                            params={"value": port, "lo": self.usable_lo, "hi": self.usable_hi},
                        )
                    }
                )
        self.reserved_ports = sorted(set(ports))


class Machine(NulFreeText):
    """A host that sources egress connections from its own port slices."""

    hostname = models.CharField(max_length=253, unique=True, validators=[validate_hostname])
    datacenter = models.ForeignKey(Datacenter, on_delete=models.PROTECT, related_name="machines")
    address = models.GenericIPAddressField(
        validators=[validate_host_address],
        help_text="The machine's own address: the next hop the load balancer steers to",
    )
    state = models.CharField(
        max_length=16, choices=MachineState.choices, default=MachineState.ACTIVE
    )
    weight = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    pools = models.ManyToManyField(EgressPool, related_name="machines", blank=True)
    joined_at = models.DateTimeField(
        default=timezone.now,
        editable=False,
        help_text="When the machine entered the inventory: the forecast's growth history",
    )
    last_seen = models.DateTimeField(null=True, blank=True)
    applied_serial = models.PositiveBigIntegerField(default=0)
    enforcement = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="What the agent last said it enforces (port range, nftables)",
    )
    bundle_serial = models.PositiveBigIntegerField(
        default=0, editable=False, help_text="Serial of the newest bundle signed for it"
    )
    stale_since = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When its agent was marked stale (silent for AGENT_STALE_MINUTES)",
    )
    steering_mark = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="The firewall mark a gateway steers its ports with: fixed for life, never reused",
    )

    class Meta:
        ordering = ["hostname"]
        constraints = [
            models.UniqueConstraint(
                fields=["datacenter", "steering_mark"], name="machine_unique_steering_mark"
            )
        ]

    # Written only by atomic UPDATEs (bundle builds, agent acks, stale marking, mark
    # allocation); a save of a stale instance (an admin form, an API PATCH) must not
    # put them back.
    COUNTERS = frozenset(
        {
            "bundle_serial",
            "applied_serial",
            "last_seen",
            "enforcement",
            "stale_since",
            "steering_mark",
        }
    )

    def __str__(self) -> str:
        return self.hostname

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in self.COUNTERS
            ]
        super().save(*args, **kwargs)

    def clean(self) -> None:
        if self.hostname:
            self.hostname = self.hostname.lower().rstrip(".")
        refuse_datacenter_move(
            self, field="datacenter", path="datacenter_id", new=self.datacenter_id
        )
