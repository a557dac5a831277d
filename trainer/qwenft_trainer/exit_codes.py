"""How the trainer's programs end, and how the training pod's launcher asks one to stop.

The operator reads these numbers and reasons from outside the process: its training-pod
launcher maps the termination log's reason to a pod exit code, and each Job's pod failure
policy decides from the exit code whether a pod failure counts against ``backoffLimit``. So
they are defined once, here, in a module without imports that the operator image (no torch)
loads too.
"""

from __future__ import annotations

# The config or the dataset can't be trained on: retrying can't help.
INVALID = 1
# Stopped on request (SIGTERM, SIGINT or the stop file) after writing a complete
# checkpoint: a restart resumes from it. 75 is EX_TEMPFAIL ("try again later").
STOPPED = 75
# A launcher that must not forward its SIGTERM to torchrun (torchrun SIGKILLs the ranks
# 30 s after forwarding a signal, a fixed time in the trainer image's torch) creates the
# file this variable names instead; every rank checks for it at each optimizer step.
STOP_FILE_ENV = "QWENFT_STOP_FILE"
# Termination-log reasons (the ``reason`` field of the JSON object ``qwenft train`` writes
# to ``TrainConfig.termination_log``).
# The config can't be trained on (a bad field, a base model the method can't use).
INVALID_CONFIG = "InvalidConfig"
# The dataset can't be trained on (the validator's report is the message).
INVALID_DATASET = "InvalidDataset"
# The reasons of a trainer that refused its input: a restart would refuse it again.
INVALID_INPUT_REASONS = (INVALID_CONFIG, INVALID_DATASET)
# Stopped on request with a complete checkpoint (exit code STOPPED).
STOPPED_REASON = "Stopped"
# The termination-log reason of a rank whose collective failed because another rank was
# lost: a consequence, so the operator looks for the rank that ended first for the cause.
PEER_LOST = "PeerLost"
# ``qwenft merge`` and ``qwenft serve``: the checkpoint that spec.inference.checkpoint names
# is not on the output volume (pruned, never saved, or none evaluated for "best"); the
# error names the kept checkpoints. Retrying can't help.
CHECKPOINT_NOT_FOUND = 4

# ``qwenft merge``: the merge failed (mismatched base, failed verification, no space) ...
MERGE_FAILED = 1
# ... or its command line or environment is wrong (argparse exits 2 on a bad argument too).
MERGE_USAGE = 2
MERGE_FAILURES = (MERGE_FAILED, MERGE_USAGE)

# ``qwenft data validate``: the data (or the model, as asked) can't be trained on; retrying
# can't help ...
VALIDATION_FAILED = 1
# ... or the model or its tokenizer can't be read, which may be a hub outage: retried.
VALIDATION_UNREADABLE = 2
