"""Datasets by hub id: `ORG/NAME[@REVISION]` -> a local folder, through huggingface_hub's cache.

A folder that exists wins over a hub id of the same spelling. Otherwise the dataset repository is
downloaded once into the hub cache (HF_HUB_CACHE / HF_HOME), only its metadata, data and the
videos of the cameras asked for; later runs, and any run with HF_HUB_OFFLINE=1, use the cache
alone. Every way this can fail ends in one error naming the id, the revision and what to do.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<revision>[\w./-]+))?$")


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """"org/name@rev" -> ("org/name", "rev"); None when spec does not look like a hub id."""
    if spec.startswith((".", "/", "~")) or spec.count("/") < 1:
        return None
    m = HUB_ID.match(spec)
    return (m["repo"], m["revision"]) if m else None


def is_hub_id(spec: str) -> bool:
    return not Path(spec).exists() and parse_hub_id(spec) is not None


def resolve_dataset(spec: str | Path, cameras: list[str] | None = None) -> Path:
    """A dataset folder, or the local snapshot of hub id `spec` (downloaded unless cached)."""
    if Path(spec).exists() or parse_hub_id(str(spec)) is None:
        return Path(spec)  # a folder (validate_lerobot says so if it is missing)
    repo, revision = parse_hub_id(str(spec))
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    where = f"dataset {repo!r} at revision {revision or 'main'!r}"
    patterns = ["meta/*", "data/*"]
    # Only the asked cameras' videos (v3.0 videos/<key>/..., v2.1 videos/chunk-*/<key>/...); a camera
    # named without observation.images. matches its key either way.
    patterns += [f"videos/*{c}/*" for c in cameras] if cameras else ["videos/*"]
    try:
        return Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=patterns))
    except RevisionNotFoundError:
        raise ValueError(f"{where}: no such revision on the hub") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{where}: no such dataset on the hub (or it is private: log in "
                                f"with `hf auth login`), and no folder {spec} exists") from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(f"{where} is not in the hub cache ({constants.HF_HUB_CACHE}) and "
                                    f"HF_HUB_OFFLINE=1 forbids downloading it (and no folder {spec} exists): download it "
                                    "once with HF_HUB_OFFLINE=0, or pass a dataset folder") from None
        raise FileNotFoundError(f"{where}: the hub cannot be reached and the dataset is not in the cache "
                                f"({constants.HF_HUB_CACHE})") from None
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"{where}: {e}") from None
