"""Gateways: which steering table each datacenter's gateway says it runs."""

from __future__ import annotations

from django.db import models

from planner.models.inventory import Datacenter
from planner.validators import validate_gateway_name


class Gateway(models.Model):
    """A gateway (``python -m agent gateway``) and the last steering table it acked.

    Registered by an admin (:func:`planner.services.steering.gateway_register`);
    then written only by :func:`planner.services.steering.gateway_ack` when the
    gateway reports: ``revision`` and ``etag`` say which table it enforces.
    """

    name = models.CharField(max_length=253, unique=True, validators=[validate_gateway_name])
    datacenter = models.ForeignKey(Datacenter, on_delete=models.CASCADE, related_name="gateways")
    revision = models.PositiveIntegerField(default=0)
    etag = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=16, blank=True, help_text="applied or failed")
    detail = models.TextField(blank=True)
    slices = models.PositiveIntegerField(default=0)
    applied_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["datacenter__code", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.datacenter.code} r{self.revision})"
