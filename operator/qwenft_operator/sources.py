"""Where a run reads its base model and dataset from, and where it writes its results.

Each location is a small one-of, shaped like a Kubernetes volume source: a hub id, a
PersistentVolumeClaim path, a ConfigMap key, an HTTP(S) or S3 URL, or a plain ``path``.
A plain path is one the trainer sees directly: a directory on the local machine for
``qwenft run --local``, or one baked into a custom trainer image in a cluster.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from qwenft_trainer.config import DataFormat
from qwenft_trainer.hub_ids import HUB_ID
from qwenft_trainer.rules import Rule

from qwenft_operator.rules import SpecObject, count_set, exactly_one

# DNS-1123 subdomain: names of Secrets, ConfigMaps and PersistentVolumeClaims.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Keys of a Secret or ConfigMap.
DATA_KEY = r"^[-._a-zA-Z0-9]+$"
# A path relative to the root of a volume (no leading "/").
RELATIVE_PATH = r"^[^/].*$"


def _object_name(what: str) -> Any:
    return Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description=f"Name of the {what}."
    )


def _relative_path(description: str) -> Any:
    return Field(min_length=1, max_length=4096, pattern=RELATIVE_PATH, description=description)


class SecretKeyRef(SpecObject):
    """A key of a Secret in the run's namespace."""

    name: str = _object_name("Secret")
    key: str = Field(
        min_length=1, max_length=253, pattern=DATA_KEY, description="Key inside the Secret."
    )


class PvcPath(SpecObject):
    """A path inside a PersistentVolumeClaim in the run's namespace."""

    claim_name: str = _object_name("PersistentVolumeClaim")
    path: str = _relative_path("Path inside the claim, relative to its root (no leading '/').")


class HubModel(SpecObject):
    """A model downloaded from the Hugging Face hub when the pods start."""

    id: str = Field(
        min_length=1,
        max_length=256,
        pattern=HUB_ID,
        description="Hub model id, e.g. 'Qwen/Qwen2.5-7B-Instruct'.",
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Branch, tag or commit to download; pin a commit for reproducible runs.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the hub token (gated or private models). It reaches "
        "the pods only as the HF_TOKEN environment variable, never the config or status.",
    )


class ModelCache(SpecObject):
    """A shared, writable PersistentVolumeClaim used as the Hugging Face cache (HF_HOME)."""

    claim_name: str = _object_name("PersistentVolumeClaim used as the shared model cache")


class ModelSpec(SpecObject):
    """The base model: exactly one of hub, pvc or path."""

    rules = (
        Rule(
            cel=exactly_one("hub", "pvc", "path"),
            check=lambda m: count_set(m, ("hub", "pvc", "path")) == 1,
            message="set exactly one model source: hub, pvc or path",
        ),
        Rule(
            cel="!has(self.cache) || has(self.hub)",
            check=lambda m: m.cache is None or m.hub is not None,
            message="a model cache is only used by hub models; remove cache or use hub",
            field=".cache",
        ),
    )

    hub: HubModel | None = Field(default=None, description="Download from the Hugging Face hub.")
    pvc: PvcPath | None = Field(
        default=None, description="A Hugging Face checkpoint directory inside a claim."
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="A checkpoint directory the trainer sees directly (on the local machine "
        "for 'qwenft run --local', or inside a custom trainer image).",
    )
    cache: ModelCache | None = Field(
        default=None, description="Shared download cache for hub models, mounted as HF_HOME."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow model code from the checkpoint (trust_remote_code)."
    )


class UrlSource(SpecObject):
    """A dataset file downloaded into the pod before training starts."""

    url: str = Field(
        min_length=8,
        max_length=2048,
        pattern=r"^(https?|s3)://[^\s]+$",
        description="http://, https:// or s3:// URL of a JSON or JSONL file.",
    )
    credentials_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Secret with the credentials: for s3://, keys AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (optional AWS_SESSION_TOKEN, AWS_DEFAULT_REGION); for "
        "http(s)://, key 'token' sent as a Bearer token.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Endpoint of an S3-compatible store (MinIO, Ceph); s3:// only.",
    )

    rules = (
        Rule(
            cel="!has(self.endpoint) || self.url.startsWith('s3://')",
            check=lambda u: u.endpoint is None or u.url.startswith("s3://"),
            message="endpoint is only used with s3:// URLs",
            field=".endpoint",
        ),
    )


class ConfigMapKey(SpecObject):
    """A key of a ConfigMap in the run's namespace (small datasets, up to about 1 MiB)."""

    name: str = _object_name("ConfigMap")
    key: str = Field(
        min_length=1, max_length=253, pattern=DATA_KEY, description="Key holding the dataset."
    )


class DatasetSpec(SpecObject):
    """The training data: exactly one of configMap, pvc, url or path, and its format.

    The held-out evaluation split is set in spec.evaluation (fraction, or a file: another
    key of the same ConfigMap, or a path inside the same claim).
    """

    rules = (
        Rule(
            cel=exactly_one("configMap", "pvc", "url", "path"),
            check=lambda d: count_set(d, ("config_map", "pvc", "url", "path")) == 1,
            message="set exactly one dataset source: configMap, pvc, url or path",
        ),
    )

    config_map: ConfigMapKey | None = Field(
        default=None, description="Read the dataset from a ConfigMap key."
    )
    pvc: PvcPath | None = Field(default=None, description="Read the dataset from a claim.")
    url: UrlSource | None = Field(
        default=None, description="Download the dataset from an HTTP(S) or S3 URL."
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="A file the trainer sees directly (local runs, or inside the image).",
    )
    format: DataFormat = Field(
        default="auto",
        description="Record format: dialogue_sequence, conversations, sharegpt (from/value), "
        "messages (OpenAI), or auto to detect it per record.",
    )


class OutputClaim(SpecObject):
    """A directory inside a PersistentVolumeClaim for the run's results."""

    claim_name: str = _object_name("PersistentVolumeClaim")
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=RELATIVE_PATH,
        description="Directory inside the claim; defaults to the run's name.",
    )


class OutputSpec(SpecObject):
    """Where checkpoints, the adapter and the merged model are written: pvc or path."""

    rules = (
        Rule(
            cel=exactly_one("pvc", "path"),
            check=lambda o: count_set(o, ("pvc", "path")) == 1,
            message="set exactly one output location: pvc or path",
        ),
    )

    pvc: OutputClaim | None = Field(
        default=None,
        description="A ReadWriteMany claim (or ReadWriteOnce for one node) shared by the "
        "training, merge and serving pods.",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="A local directory ('qwenft run --local' only: in a cluster the results "
        "must outlive the pods, so use pvc).",
    )
