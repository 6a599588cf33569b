"""The planner–agent contract: task names, queues, and the reports agents send back.

Standard library only: the planner and the agent both import it, and neither
side imports the other (tests/test_package_boundaries.py). Acks and usage
reports are *built* through :func:`ack_message` and :func:`usage_message` and
*checked* by :func:`validate_ack` and :func:`validate_usage`; gateway acks by
:func:`gateway_ack_message` and :func:`validate_gateway_ack`. The broker is an
untrusted transport, so the planner validates every message it takes off it.
Host names follow :func:`hostname_problem`, on both sides.
"""

from contract.hostnames import hostname_problem, is_hostname
from contract.messages import (
    ACK_FIELDS,
    ACK_STATUSES,
    APPLIED,
    BUCKET_SIZE,
    DUPLICATE,
    FAILED,
    GATEWAY_ACK_FIELDS,
    GATEWAY_STATUSES,
    MAX_CLOCK_SKEW,
    MAX_REPORT_AGE,
    MAX_SLICES,
    REJECTED,
    USAGE_FIELDS,
    Ack,
    ContractError,
    GatewayAck,
    SliceReport,
    UsageReport,
    ack_message,
    gateway_ack_message,
    gateway_name_problem,
    not_after_issued,
    usage_message,
    validate_ack,
    validate_gateway_ack,
    validate_usage,
    within_window,
)
from contract.tasks import (
    ACK_TASK,
    AGENT_AUDIENCE,
    APPLY_TASK,
    GATEWAY_ACK_TASK,
    GATEWAY_APPLY_TASK,
    GATEWAY_AUDIENCE,
    ISSUER,
    PLANNER_QUEUE,
    PUBLISH_TASK,
    USAGE_TASK,
    agent_queue,
    gateway_queue,
)

__all__ = [
    "ACK_FIELDS",
    "ACK_STATUSES",
    "ACK_TASK",
    "AGENT_AUDIENCE",
    "APPLIED",
    "APPLY_TASK",
    "BUCKET_SIZE",
    "DUPLICATE",
    "FAILED",
    "GATEWAY_ACK_FIELDS",
    "GATEWAY_ACK_TASK",
    "GATEWAY_APPLY_TASK",
    "GATEWAY_AUDIENCE",
    "GATEWAY_STATUSES",
    "ISSUER",
    "MAX_CLOCK_SKEW",
    "MAX_REPORT_AGE",
    "MAX_SLICES",
    "PLANNER_QUEUE",
    "PUBLISH_TASK",
    "REJECTED",
    "USAGE_FIELDS",
    "USAGE_TASK",
    "Ack",
    "ContractError",
    "GatewayAck",
    "SliceReport",
    "UsageReport",
    "ack_message",
    "agent_queue",
    "gateway_ack_message",
    "gateway_name_problem",
    "gateway_queue",
    "hostname_problem",
    "is_hostname",
    "not_after_issued",
    "usage_message",
    "validate_ack",
    "validate_gateway_ack",
    "validate_usage",
    "within_window",
]
