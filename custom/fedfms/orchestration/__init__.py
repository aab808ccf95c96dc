"""Orchestration, run offline by people and tools, never by NVFlare: writing job folders from the
registries (``jobs``; how models travel, with the filter chains, flags and byte measurements of the
transfer options: ``transfer``), running NVFlare's simulator and other child processes with a log each
(``simulator``), and the demo (``demo``). The study runner (``fedfms.study``) builds on it."""
