"""How a ``qwenft train`` process ends, and how the pod's launcher asks it to stop.

The operator reads these numbers from outside the process: its training-pod launcher maps
them to a pod exit code and the Job's pod failure policy decides from that code whether a
pod failure counts against ``backoffLimit``. So they are defined once, here, in a module
without imports that the operator image (no torch) loads too.
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
# The termination-log reason of a rank whose collective failed because another rank was
# lost: a consequence, so the operator looks for the rank that ended first for the cause.
PEER_LOST = "PeerLost"
# ``qwenft merge`` and ``qwenft serve``: the checkpoint that spec.inference.checkpoint names
# is not on the output volume (pruned, never saved, or none evaluated for "best"); the
# error names the kept checkpoints. Retrying can't help.
CHECKPOINT_NOT_FOUND = 4
