"""Orchestration, run offline by people and tools, never by NVFlare: writing job folders from the
registries (``jobs``), how models travel (``transfer``: the transfer options' checks, filter chains,
flags and byte measurement; ``transfer_table``: those bytes per method and option), running NVFlare's
simulator and other child processes with a log each (``simulator``), and the demo (``demo``). The
study runner (``fedfms.study``) builds on it."""
