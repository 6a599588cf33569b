"""Port-slice allocation engine: pure Python, standard library only.

Plans which machine owns which port range of which egress IP. It never imports
Django, the planner or the agent; both of those may import it.
"""
