"""Orchestration, run offline by people and tools, never by NVFlare: writing job folders from the
registries (``jobs``), running NVFlare's simulator and other child processes with a log each
(``simulator``), and the demo (``demo``). The study runner (``fedfms.study``) builds on it."""
