"""The quick start's live demo: network namespaces, demo agents and real traffic.

``manage.py demo_agents`` (run by ``make run``) builds the topology, starts an
agent and a traffic generator per demo machine and keeps the gateway's steering
in step with the plan. These modules import no Django: the traffic generator
and the listener run inside the demo's namespaces, beside the agents.
"""
