"""The planner–agent contract: task names, queues, and the reports agents send back.

Standard library only: the planner and the agent both import it, and neither
side imports the other (tests/test_package_boundaries.py). Acks and usage
reports are *built* through :func:`ack_message` and :func:`usage_message` and
*checked* by :func:`validate_ack` and :func:`validate_usage`; the broker is an
untrusted transport, so the planner validates every message it takes off it.
"""

from contract.messages import (
    ACK_FIELDS,
    ACK_STATUSES,
    APPLIED,
    DUPLICATE,
    FAILED,
    MAX_SLICES,
    REJECTED,
    USAGE_FIELDS,
    Ack,
    ContractError,
    SliceReport,
    UsageReport,
    ack_message,
    usage_message,
    validate_ack,
    validate_usage,
)
from contract.tasks import (
    ACK_TASK,
    APPLY_TASK,
    GATEWAY_ACK_TASK,
    GATEWAY_APPLY_TASK,
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
    "APPLIED",
    "APPLY_TASK",
    "DUPLICATE",
    "FAILED",
    "GATEWAY_ACK_TASK",
    "GATEWAY_APPLY_TASK",
    "MAX_SLICES",
    "PLANNER_QUEUE",
    "PUBLISH_TASK",
    "REJECTED",
    "USAGE_FIELDS",
    "USAGE_TASK",
    "Ack",
    "ContractError",
    "SliceReport",
    "UsageReport",
    "ack_message",
    "agent_queue",
    "gateway_queue",
    "usage_message",
    "validate_ack",
    "validate_usage",
]
