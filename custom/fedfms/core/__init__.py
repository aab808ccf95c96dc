"""The bottom layer: atomic file output and guarded tensor input (``io``), and the names that the
participants of a job agree on (``wire``). It imports nothing from fedfms, NVFlare or MONAI."""
