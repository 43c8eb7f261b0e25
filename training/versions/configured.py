"""The model store the settings name: ``MODEL_DIR`` alone, or ``MODEL_STORE_URL`` over it.

Every process opens its store here, so a backend and a worker configured alike share
versions whether they share a folder (a local disk, NFS) or only an S3-compatible bucket.
With ``MODEL_STORE_URL`` set, ``MODEL_DIR`` is this machine's cache of versions, never shared.
boto3 is imported only then: commands that never touch S3 do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from training.versions.store import ModelStore

if TYPE_CHECKING:
    from training.settings import Settings


def parse_store_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix); raises ValueError for anything else."""
    parts = urlsplit(url)
    if parts.username or parts.password:  # checked first: an error never echoes a secret
        raise ValueError(
            "MODEL_STORE_URL takes no credentials: use AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY and S3_ENDPOINT_URL"
        )
    if parts.scheme != "s3" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"MODEL_STORE_URL must look like s3://bucket/prefix, got {url!r}")
    if parts.port:
        raise ValueError(
            "MODEL_STORE_URL takes no credentials nor port: use AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY and S3_ENDPOINT_URL"
        )
    return parts.hostname, parts.path.strip("/")


def open_store(settings: Settings) -> ModelStore:
    """The store every process of this deployment shares (docs/kubernetes.md)."""
    keep = settings.keep_rejected_versions
    if not settings.model_store_url:
        return ModelStore(settings.model_dir, keep_rejected=keep)
    from training.versions.s3_storage import S3Storage

    bucket, prefix = parse_store_url(settings.model_store_url)
    storage = S3Storage(bucket, prefix, settings.model_dir, settings.s3_endpoint_url)
    return ModelStore(settings.model_dir, keep_rejected=keep, storage=storage)
