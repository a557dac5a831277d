"""Where things are inside the run's pods, in one place.

Volumes are mounted at fixed directories; a spec ``path`` (no claim) is used as it is,
which is what makes ``qwenft run --local`` work with the same spec and the same
:func:`~qwenft_operator.builders.config.build_train_config`.
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlparse

from qwenft_operator.parsed_run import Run

DATA_DIR = "/data"  # dataset ConfigMap, claim, or downloaded file
MODEL_DIR = "/models"  # model claim (read-only)
CACHE_DIR = "/cache"  # shared model cache claim
HF_HOME = f"{CACHE_DIR}/huggingface"
OUTPUT_DIR = "/output"  # output claim
CONFIG_DIR = "/etc/qwenft"  # the rendered trainer config
CONFIG_KEY = "train.yaml"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"
SHM_DIR = "/dev/shm"
TMP_DIR = "/tmp"  # writable HOME for non-root images
MERGED_SUBDIR = "merged"  # the merge Job's output in output_dir
DEFAULT_URL_FILE = "dataset.jsonl"


def model_location(run: Run) -> str:
    """What ``from_pretrained`` loads: a hub id, or a directory."""
    model = run.spec.model
    if model.hub is not None:
        return model.hub.id
    if model.pvc is not None:
        return posixpath.join(MODEL_DIR, model.pvc.path)
    assert model.path is not None  # the spec's rules guarantee exactly one source
    return model.path


def model_revision(run: Run) -> str | None:
    """The hub revision the run is pinned to (training, merge and serving all load it)."""
    hub = run.spec.model.hub
    return hub.revision if hub is not None else None


def url_file_name(url: str) -> str:
    """File name a downloaded dataset keeps (its URL's last path segment)."""
    name = posixpath.basename(urlparse(url).path)
    return name or DEFAULT_URL_FILE


def dataset_file(run: Run) -> str:
    """The dataset file as the trainer sees it."""
    data = run.spec.dataset
    if data.config_map is not None:
        return posixpath.join(DATA_DIR, data.config_map.key)
    if data.pvc is not None:
        return posixpath.join(DATA_DIR, data.pvc.path)
    if data.url is not None:
        return posixpath.join(DATA_DIR, url_file_name(data.url.url))
    assert data.path is not None
    return data.path


def evaluation_file(run: Run) -> str | None:
    """spec.evaluation.file resolved next to the dataset (same ConfigMap, same claim)."""
    file = run.spec.evaluation.file
    if file is None or run.spec.dataset.path is not None:
        return file
    return posixpath.join(DATA_DIR, file)


def output_dir(run: Run) -> str:
    """The run's output directory: checkpoints, adapter, merged model, summary."""
    output = run.spec.output
    if output.pvc is not None:
        return posixpath.join(OUTPUT_DIR, output.pvc.path or run.name)
    assert output.path is not None
    return output.path


def adapter_dir(run: Run) -> str:
    """The final adapter (LoRA, Q-LoRA) or full weights (method full).

    The trainer saves them in ``output_dir`` itself, next to ``checkpoint-N/`` and
    ``summary.json``.
    """
    return output_dir(run)


def merged_dir(run: Run) -> str:
    return posixpath.join(output_dir(run), MERGED_SUBDIR)
