"""Everything that crosses between the server and a site for an ai4hi job: task names, meta and
params keys, and which metric names may travel in the clear. Constants only (imports nothing), so
the server, the site runtime and the CLI agree without importing each other.

A job states :data:`WIRE_VERSION` (the site executor's ``wire_version`` argument); a site refuses a
job built for a version it does not speak, before any of the job's settings are used.
"""

from __future__ import annotations

#: version of this module's vocabulary; bump on any incompatible change
#: (3: secure aggregation's consistency round, the masked-input header, the job's site list)
WIRE_VERSION = 4

# ---------------------------------------------------------------- task names
TRAIN_TASK = "train"
VALIDATE_TASK = "validate"  # the global model on each site's validation split
KEYS_TASK = "ai4hi_secagg_keys"
SHARES_TASK = "ai4hi_secagg_shares"
CONSISTENCY_TASK = "ai4hi_secagg_consistency"  # each survivor signs the survivor set before any unmasking
UNMASK_TASK = "ai4hi_secagg_unmask"
PROTOCOL_TASKS = (KEYS_TASK, SHARES_TASK, CONSISTENCY_TASK, UNMASK_TASK)
CROSS_VALIDATE_TASK = "ai4hi_cross_validate"  # candidate vs champion on the fixed test split
MONITOR_TASK = "ai4hi_monitor"  # drift statistics of the deployed model
#: per-class score histograms of models on the validation split (a model version's operating point)
OPERATING_POINT_TASK = "ai4hi_operating_point"
VALIDATION_TASKS = (CROSS_VALIDATE_TASK, MONITOR_TASK, OPERATING_POINT_TASK)
TRAINING_TASKS = (TRAIN_TASK, VALIDATE_TASK, *PROTOCOL_TASKS)
ALL_TASKS = (*TRAINING_TASKS, *VALIDATION_TASKS)

# ---------------------------------------------------------------- result meta keys (site -> server)
#: the FedAvg weight n_k (training examples per local epoch), plain FedAvg only
NUM_SAMPLES_KEY = "ai4hi_num_samples"
#: a site's refusal (its reason); such a result carries nothing else but REFUSAL_PRIVACY_KEY
REFUSED_KEY = "ai4hi_refused"
#: with a refusal: the site's privacy position {dataset_id, epsilon_spent, epsilon_limit, delta}
REFUSAL_PRIVACY_KEY = "ai4hi_refusal_privacy"
#: the round a training result belongs to (checked by the egress guard against the ledger)
ROUND_KEY = "ai4hi_round"
#: a (fault-injected) dropped site: it counts as absent
DROPPED_KEY = "ai4hi_dropped"

# ---------------------------------------------------------------- task meta keys (server -> site)
#: protocol data of a secure-aggregation step
SECAGG_META = "ai4hi_secagg"
#: how many sites the server says the job trains with: informational only, a site never sizes its
#: noise or payload from it (client-level DP uses the participant set the site verified itself)
NUM_SITES_KEY = "ai4hi_n_sites"
#: inside SECAGG_META: the job's sites as the server claims them; a site keeps only those its kit's
#: consortium list names (``<kit>/ai4hi/consortium.json``), so the claim can narrow, never widen
SECAGG_SITES = "sites"
#: with a cross-validation task: each model's operating point {role: {"threshold", "calibration"}}
#: (chosen by the server from the validation histograms; the site checks and applies it)
OPERATING_POINTS_META = "ai4hi_operating_points"

# ---------------------------------------------------------------- params keys of protocol messages
ADVERT, SHARES, MASKED, UNMASK = "secagg_advertise", "secagg_shares", "secagg_masked", "secagg_unmask"
#: the masked vector's header (job, round, site, the neighbours it was masked with), uint8 next to it
MASKED_HEADER = "secagg_masked_header"
#: a site's signature over the survivor set of the consistency round
CONSISTENCY = "secagg_consistency"
PROTOCOL_PARAMS = (ADVERT, SHARES, MASKED, MASKED_HEADER, CONSISTENCY, UNMASK)
#: what each protocol task's result may carry (uint8 byte strings); next round's shares ride on the unmask
PROTOCOL_RESULT_PARAMS = {KEYS_TASK: (ADVERT,), SHARES_TASK: (SHARES,), CONSISTENCY_TASK: (CONSISTENCY,),
                          UNMASK_TASK: (UNMASK, SHARES)}
#: what a securely aggregated training result carries: the masked uint32 vector, its uint8 header and
#: (optionally) next round's signed keys
SECURE_TRAIN_PARAMS = (MASKED, MASKED_HEADER, ADVERT)

# ---------------------------------------------------------------- metric names and what may leave
#: privacy accounting the lead needs to see; booked in the site's ledger, always in the clear
ACCOUNTING_METRICS = ("dp_epsilon", "dp_delta")
#: privacy parameters of a round: reveal the training-set size (q = 1 / batches), so under secure
#: aggregation they never leave in the clear
DP_PARAMETER_METRICS = ("dp_noise_multiplier", "dp_sample_rate", "dp_steps")
#: statistics of the locally trained model and its training: outside epsilon (unclipped, un-noised
#: losses of training patients), so they leave only inside a secure-aggregation sum, never alone
LOCAL_TRAINING_METRICS = ("train_loss", "train_steps", "train_samples", "train_seconds", "local_seconds")
#: prefix of metrics of the locally trained model on the validation split (same rule as above)
LOCAL_VALIDATION_PREFIX = "val_"
#: prefix of metrics of the *received* global model on the validation split: evaluation aggregates
#: of a model every site holds, sent in the clear when the split has at least the site's k studies
GLOBAL_VALIDATION_PREFIX = "global_val_"
#: agreement of a site's weak labels (from its reports) with its hand labels, over the studies that
#: have both: data-quality aggregates like the global evaluation, sent (in the clear without secure
#: aggregation) only when WEAK_LABEL_COUNT is at least the site's k; per-study labels never leave
WEAK_LABEL_COUNT = "weak_label_studies"
WEAK_LABEL_METRICS = (WEAK_LABEL_COUNT, "weak_label_agreement", "weak_label_kappa")

# ---------------------------------------------------------------- job settings with a meaning to the SDK
#: ``model.checkpoint``: the lead's path to a base checkpoint (backbone folder); it never travels:
#: the job carries only ``model.checkpoint_sha256`` and each site uses its own verified copy
BASE_CHECKPOINT_KEY = "checkpoint"
BASE_CHECKPOINT_SHA256_KEY = "checkpoint_sha256"

# ---------------------------------------------------------------- result files (server side)
METRICS_FILE = "ai4hi_metrics.json"
MODEL_FILE = "global_model.pt"
#: folder of the job's app holding model files the server reads (warm start, champion, candidate):
#: data, not code, so never NVFlare's ``custom/`` (which would make the job custom code at sites)
APP_DATA_DIR = "ai4hi_data"
INITIAL_MODEL_FILE = "ai4hi_initial_model.pt"  # optional warm start, in APP_DATA_DIR
VALIDATION_RESULT_FILE = "ai4hi_validation.json"
#: folder (in the server's run folder, then ``result/``) of a pretraining job's backbone
BACKBONE_RESULT_DIR = "backbone"
RECEIPT_LOG = "ai4hi_receipts.jsonl"


# ---------------------------------------------------------------- several models in one task
def join_models(models: dict) -> dict:
    """``{"candidate": {"w": t}, "champion": {"w": t}}`` -> ``{"candidate/w": t, "champion/w": t}``."""
    return {f"{role}/{k}": v for role, state in models.items() for k, v in state.items()}


def split_models(params: dict) -> dict:
    """Inverse of :func:`join_models`."""
    out: dict = {}
    for name, value in params.items():
        role, _, key = name.partition("/")
        out.setdefault(role, {})[key] = value
    return out
