"""The push agent: collect through collector plugins, spool on disk, send, back off.

The agent runs on every monitored machine, so its memory counts: it is a plain
synchronous loop (no event loop), and it loads neither the server's model and
settings, nor cattrs, nor importlib.metadata (docs/benchmarks.md, agent
footprint; tests/agent/test_agent_imports.py pins what it imports). For the same
reason its internal records are NamedTuples: an attrs class costs about three
times the memory to create, and none of these needs what attrs adds.
"""
