"""The execution protocol's bottom layer: wire types, constants and the decision core.

Everything above (worker, simulator, planners, runtime, backends, metrics) imports from
here; this package imports only ``dag``, ``plan``, ``layout`` and ``storage.serialize``.
"""
