"""Task and queue names: the two sides send by name and never import each other's tasks."""

from __future__ import annotations

from typing import Final

#: planner → agent, on ``agent_queue(hostname)``: ``agent.apply_bundle(token)``.
APPLY_TASK: Final = "agent.apply_bundle"
#: agent → planner, on :data:`PLANNER_QUEUE`: keyword arguments of :func:`contract.ack_message`.
ACK_TASK: Final = "planner.record_ack"
#: agent → planner, on :data:`PLANNER_QUEUE`: keyword arguments of :func:`contract.usage_message`.
USAGE_TASK: Final = "planner.record_usage"
#: planner → planner: put a revision's pending bundles on the agents' queues.
PUBLISH_TASK: Final = "planner.publish_revision"

#: planner → gateway, on ``gateway_queue(datacenter)``: ``gateway.apply_steering(token)``.
GATEWAY_APPLY_TASK: Final = "gateway.apply_steering"
#: gateway → planner, on :data:`PLANNER_QUEUE`: what a gateway applied.
GATEWAY_ACK_TASK: Final = "planner.record_gateway_ack"

PLANNER_QUEUE: Final = "planner"


def agent_queue(hostname: str) -> str:
    """The queue one host's agent consumes."""
    return f"agent.{hostname}"


def gateway_queue(datacenter: str) -> str:
    """The queue a datacenter's gateway consumes."""
    return f"gateway.{datacenter}"
