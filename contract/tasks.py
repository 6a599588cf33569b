"""Names both sides share: tasks and queues (the two sides send by name and never
import each other's tasks), and the issuer and audiences of the signed tokens."""

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
#: planner → planner, after :data:`PUBLISH_TASK`: sign and send a datacenter's steering table.
STEERING_TASK: Final = "planner.publish_steering"

#: planner → gateway, on ``gateway_queue(datacenter)``: ``gateway.apply_steering(token)``.
GATEWAY_APPLY_TASK: Final = "gateway.apply_steering"
#: gateway → planner, on :data:`PLANNER_QUEUE`: what a gateway applied.
GATEWAY_ACK_TASK: Final = "planner.record_gateway_ack"

PLANNER_QUEUE: Final = "planner"

#: ``iss`` of every token the planner signs.
ISSUER: Final = "portslice-planner"
#: ``aud`` of a host's config bundle (``agent.apply_bundle``).
AGENT_AUDIENCE: Final = "portslice-agent"
#: ``aud`` of a datacenter's steering table (``gateway.apply_steering``).
GATEWAY_AUDIENCE: Final = "portslice-gateway"


def agent_queue(hostname: str) -> str:
    """The queue one host's agent consumes."""
    return f"agent.{hostname}"


def gateway_queue(datacenter: str) -> str:
    """The queue a datacenter's gateway consumes."""
    return f"gateway.{datacenter}"
