"""Thin wiring, in four rooms with one import direction: ``cli`` -> ``runtime`` / ``app`` -> ``views``.

* ``app``: the Faust app, its agents, the commit protocol, the model lifecycle (the worker process);
* ``runtime``: the embedded stack: broker, child processes, supervision, benchmarks;
* ``views``: what operators look at: the web endpoints, ``cem top``, the read side;
* ``cli``: the ``cem`` command.

``settings`` is shared by all of them.
"""
