"""Live usage the agents report: the latest per slice, and a down-sampled history."""

from __future__ import annotations

from django.db import models

from planner.models.inventory import Machine
from planner.models.slices import PortSlice


class SliceUsage(models.Model):
    """The newest report for one slice: sockets in it and per 64-port bucket."""

    slice = models.OneToOneField(PortSlice, on_delete=models.CASCADE, related_name="usage")
    at = models.DateTimeField()
    tcp = models.PositiveIntegerField(default=0)
    udp = models.PositiveIntegerField(default=0)
    buckets = models.JSONField(default=dict, blank=True, help_text="bucket_lo -> sockets")

    def __str__(self) -> str:
        return f"{self.slice_id}: {self.tcp} tcp, {self.udp} udp at {self.at:%H:%M:%S}"


class UsageSample(models.Model):
    """History: at most one row per slice per ``USAGE_SAMPLE_SECONDS``, kept for
    ``USAGE_RETENTION_DAYS``. Keyed by address and ports, not by slice row, so
    it outlives the slice."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="usage_samples")
    ip = models.GenericIPAddressField()
    lo = models.PositiveIntegerField()
    hi = models.PositiveIntegerField()
    at = models.DateTimeField(db_index=True)
    sockets = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["machine", "ip", "lo", "at"], name="usage_sample_slice")]

    def __str__(self) -> str:
        return f"{self.machine_id} {self.ip}:{self.lo}-{self.hi} {self.sockets} at {self.at}"
