"""What NVFlare loads at run time, on a site or on the server (job configs name these classes):

- executor:       BundleExecutor, a site running the job's MONAI bundle each round
- selection:      the one auditable place that decides which tensors cross the wire, both ways
- persistor:      TransmittedModelPersistor, the server's global model (full on disk, transmitted on the wire)
- controller:     ScatterAndGather restricted to the training sites (leave-one-site-out)
- aggregation:    GuardedAggregator, weighted FedAvg / FedSCA that rejects bad updates
- precision:      float16 transfer filters
- report:         JobReport, the server's per-round log, round history and cross-site results
- site_config:    where a site finds its data and SAM weights (its own configuration, never the job's)
- privacy:        the site's result policy (NVFlare privacy scopes): what may leave a site, decided by the site
- bundle_network: reading the bundle a job carries

Writing jobs and running them (simulator, demo, study) is orchestration: ``fedfms.orchestration``.
"""
