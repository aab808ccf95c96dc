"""Names the participants of a job agree on: the meta and metric keys of the messages a site and the
server exchange, and the file layout of a job and of the server's run folder.

Writers and readers of a message import its keys from here, so the server's report and the transfer
filters do not depend on the site's executor (nor on MONAI or NVFlare) to read them.
"""

# -- what a site's training result carries (DXO meta / metrics), besides NVFlare's own MetaKey entries
#: validation Dice of the received global model on the site's validation split (the best-model key)
VAL_DICE = "val_dice"
#: cross-site evaluation: Dice of a received model on the site's test split
TEST_DICE = "test_dice"
#: the site's mean training loss this round
TRAIN_LOSS = "train_loss"
#: serialized bytes of the site's result as it leaves the site
BYTES_SENT = "bytes_sent"
#: differential privacy (fedfms.runtime.dp): the (epsilon, delta) this site has spent so far in the job
DP_EPSILON = "dp_epsilon"
DP_DELTA = "dp_delta"
#: SHA-256 of the frozen (never sent) weights a model was built on; the server attaches it, sites check it
FROZEN_SHA256 = "fedfms_frozen_sha256"
#: layout of a compressed model (int8 delta) in an APP_DEFINED DXO: format, scale mode, top-k fraction,
#: tensor shapes and dtypes, SHA-256 of the model it is a delta against (fedfms.runtime.compression)
CODEC = "fedfms_codec"

# -- job layout (NVFlare job folder; paths relative to the app folder, then to the bundle)
#: the MONAI bundle inside a job's app folder
BUNDLE_IN_APP = "config/bundle"
#: the bundle's training configuration (network, data, trainer, validation)
TRAIN_CONFIG = "configs/train.json"
#: applied on top of TRAIN_CONFIG to evaluate a model on the test split
EVALUATE_CONFIG = "configs/evaluate.json"
#: the job's settings of the bundle (encoder, image size, batch size, ...), written once per job and
#: applied on top of the bundle's configurations by every participant
JOB_CONFIG = "configs/job.json"

# -- the server's run folder
#: per-round history written by the server's job report
ROUNDS_FILE = "fedfms_rounds.json"
#: the last aggregated global model (NVFlare's PTFileModelPersistor file), relative to the run folder
GLOBAL_MODEL_IN_RUN = "app_server/FL_global_model.pt"
#: stem of the cross-site results table (.json, .md) in the server's cross_site_val folder
RESULTS_FILE = "fedfms_results"
#: per-site fields of a round in ROUNDS_FILE: serialized bytes the server received from the site (its
#: training result, as it arrived) and sent to it (the train task, after the server's filters)
BYTES_UP, BYTES_DOWN = "bytes_up", "bytes_down"

# -- the federated planning step of jobs whose network is planned from the sites' data (FednnU-Net)
#: task: a training site computes nnU-Net's dataset fingerprint of its training split and returns it
FINGERPRINT_TASK = "nnunet_fingerprint"
#: task: every site receives the plan made from the merged fingerprints
PLAN_TASK = "nnunet_plan"
#: the one entry of the fingerprint task's result (a DXO of COLLECTION)
FINGERPRINT_KEY = "fingerprint"
#: the one entry of the plan task's data (a DXO of COLLECTION)
PLAN_KEY = "plan"
#: reply header of a failed planning task: the site's error message (names the site and the file, never
#: image content), so the server can log why a site is missing
ERROR_MESSAGE = "fedfms_error"
