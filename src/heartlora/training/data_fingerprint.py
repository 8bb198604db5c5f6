"""The fingerprint of the data a run trains and evaluates on, so that a resume on other data is
refused instead of silently mixing two datasets in one run.

A split's fingerprint is its image count, its class count and a SHA-256 over its ordered
``(path, label)`` list, paths relative to the run's ``data_root`` (so the same listing gives the
same fingerprint in another checkout). Image bytes are not read: hashing every image would cost
as much as an epoch. The run stores the fingerprints of both splits in ``checkpoint.pt``
(key ``data``) and in ``result.json`` (key ``data``); `check_same_data` compares them when the
run resumes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from heartlora.errors import HeartLoRAError

SPLIT_ROLES = ("train", "eval")
"""The splits a run fingerprints: the one it trains on and the one it evaluates on."""


def split_fingerprint(
    samples: Sequence[tuple[Path, int]], num_classes: int, root: str | Path, listing: str
) -> dict[str, Any]:
    """The fingerprint of one split.

    Args:
        samples: the dataset's ``(path, label)`` pairs, in its order (the order batches use).
        num_classes: the dataset's class count.
        root: the run's ``data_root``; paths below it are hashed relative to it.
        listing: what lists the split (its split file, or folder), named in messages.

    Returns:
        ``{"listing", "images", "num_classes", "sha256"}``: plain values, for a checkpoint
        (``torch.load(weights_only=True)`` reads them) and for JSON.
    """
    digest = hashlib.sha256()
    root = Path(root)
    for path, label in samples:
        try:
            name = Path(path).relative_to(root).as_posix()
        except ValueError:
            name = Path(path).as_posix()
        digest.update(f"{name}\t{int(label)}\n".encode("utf-8", "surrogateescape"))
    return {
        "listing": str(listing),
        "images": len(samples),
        "num_classes": int(num_classes),
        "sha256": digest.hexdigest(),
    }


def check_same_data(saved: Any, now: dict[str, dict[str, Any]], where: str) -> None:
    """Raise `HeartLoRAError` unless ``saved`` (a run's stored fingerprints) matches ``now``.

    Args:
        saved: ``{"train": fingerprint, "eval": fingerprint}`` as the run stored it.
        now: the same for the data found now.
        where: the file ``saved`` came from, named in the message.

    Raises:
        HeartLoRAError: one line naming the split that changed and how (image count, class
            count, or the same count with other paths or labels), or a damaged ``saved``.
    """
    if not isinstance(saved, dict) or set(saved) != set(SPLIT_ROLES):
        raise HeartLoRAError(f"{where}: damaged data fingerprint (expected keys train, eval)")
    for role in SPLIT_ROLES:
        then, current = saved[role], now[role]
        keys = ("listing", "images", "num_classes", "sha256")
        if not isinstance(then, dict) or not all(key in then for key in keys):
            raise HeartLoRAError(f"{where}: damaged data fingerprint ({role})")
        change = _change(then, current)
        if change is not None:
            what = "training" if role == "train" else "evaluation"
            raise HeartLoRAError(
                f"{where}: the {what} data changed since the run started ({current['listing']}: "
                f"{change}); resume only on the data the run trained on, or start again with "
                "--overwrite"
            )


def _change(then: dict[str, Any], now: dict[str, Any]) -> str | None:
    """How split fingerprint ``now`` differs from ``then``, in words; None when equal."""
    if then["images"] != now["images"]:
        return f"{then['images']} images then, {now['images']} now"
    if then["num_classes"] != now["num_classes"]:
        return f"{then['num_classes']} classes then, {now['num_classes']} now"
    if then["sha256"] != now["sha256"]:
        return f"the same {now['images']} images, but other paths, labels or order"
    return None
