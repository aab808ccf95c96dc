"""What NVFlare loads at run time, on a site or on the server (job configs name these classes):

- executor:       BundleExecutor, a site running the job's MONAI bundle each round
- selection:      the one auditable place that decides which tensors cross the wire, both ways
- persistor:      TransmittedModelPersistor, the server's global model (full on disk, transmitted on the wire)
- controller:     ScatterAndGather restricted to the training sites (leave-one-site-out), not waiting for
                  sites that went missing, resuming a crashed job
- aggregation:    GuardedAggregator, weighted FedAvg / FedSCA that rejects bad updates (NaN, shapes, dtypes,
                  lying n_k, outliers), clips update norms, optionally a trimmed mean / median
- best_model:     AcceptedModelSelector, the best global model by the validation Dice of accepted results
- finite:         the one NaN/inf check of every model received, aggregated or persisted
- dp:             differential privacy of site updates (clipping + Gaussian noise, Opacus RDP accounting)
- faults:         fault-injection filters for drills, tests and measurements (never in a generated job)
- precision:      float16 transfer filters
- codec:          int8 deltas, top-k masks, error feedback, partial-upload tensor selection (numpy)
- compression:    the int8 / partial-upload filters, both directions (site and server)
- report:         JobReport, the server's per-round log, round history and cross-site results
- site_config:    where a site finds its data and SAM weights (its own configuration, never the job's)
- privacy:        the site's result policy (NVFlare privacy scopes): what may leave a site, decided by the site
- bundle_network: reading the bundle a job carries

Writing jobs and running them (simulator, demo, study) is orchestration: ``fedfms.orchestration``.
"""
