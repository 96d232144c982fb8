"""Text records as torchmetrics state, correct under DDP and de-duplicated by example id.

torchmetrics can only synchronise tensors. :class:`RecordMetric` keeps each ``update``'s records as
one JSON-lines byte string stored in a float tensor (one byte a value; a float tensor because
torchmetrics pads a rank that saw no data with an empty tensor of the metric's float dtype).
The state is a list reduced with ``cat``: concatenating newline-terminated JSON lines from every
rank is again valid JSON lines, so the standard ``gather_all_tensors`` (uneven sizes included)
synchronises it, on gloo and NCCL alike.

``compute`` decodes the records and keeps the **first record of each id**: the
``DistributedSampler`` pads the last batch with repeated examples, which must count once. Records
without an id (``ids=None``) are all kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _plain_id(i: Any) -> Any:
    if isinstance(i, torch.Tensor):
        return i.item()
    if hasattr(i, "item") and not isinstance(i, (str, bytes)):  # numpy scalars
        return i.item()
    return i


def encode_records(records: Sequence[dict]) -> torch.Tensor:
    """JSON lines → float tensor of byte values (1-D)."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).float() if data else torch.zeros(0)


def decode_records(state: torch.Tensor | list[torch.Tensor]) -> list[dict]:
    """Inverse of :func:`encode_records` over the (possibly concatenated) state."""
    if isinstance(state, list):
        if not state:
            return []
        state = dim_zero_cat(state)
    data = state.detach().round().to(torch.uint8).cpu().numpy().tobytes()
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line]


def dedup_by_id(records: list[dict]) -> list[dict]:
    """Keep the first record of each id (records whose id is None are all kept)."""
    seen: set[str] = set()
    out = []
    for r in records:
        key = r.get("id")
        if key is not None:
            k = json.dumps(key)
            if k in seen:
                continue
            seen.add(k)
        out.append(r)
    return out


class RecordMetric(Metric):
    """Base: subclasses turn each example into a JSON-able dict in :meth:`_record` and score the
    de-duplicated list in :meth:`_score`."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    #: Names of the values ``compute`` returns (one name: a scalar; several: a dict).
    names: tuple[str, ...] = ()
    #: Batch keys (beside predictions, references and ids) that :meth:`update` reads per example and
    #: hands to :meth:`_record` by name, e.g. ``("attributes",)``; the systems pass them when present.
    extra_keys: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("records", default=[], dist_reduce_fx="cat")

    def _record(self, prediction: str, references: Sequence[str], **extras: Any) -> dict:
        raise NotImplementedError

    def update(
        self,
        predictions: Sequence[str],
        references: Sequence[Sequence[str] | str],
        ids: Sequence[Any] | None = None,
        **extras: Sequence[Any],
    ) -> None:
        """Add a batch.

        Args:
            predictions: (B) generated strings.
            references: (B) lists of reference strings (a bare string counts as one reference).
            ids: (B) example ids (``batch["ids"]``), ints or strings; used to count each example once.
            **extras: (B) values per example for the keys of :attr:`extra_keys` (others are ignored).
        """
        if isinstance(predictions, str):
            raise TypeError("predictions must be a sequence of strings, not one string")
        if len(predictions) != len(references) or (ids is not None and len(ids) != len(predictions)):
            raise ValueError(
                f"batch sizes differ: {len(predictions)} predictions, {len(references)} "
                f"references, {None if ids is None else len(ids)} ids"
            )
        extras = {k: v for k, v in extras.items() if k in self.extra_keys}
        for k, v in extras.items():
            if len(v) != len(predictions):
                raise ValueError(f"batch sizes differ: {len(predictions)} predictions, {len(v)} {k}")
        recs = []
        for j, (p, refs) in enumerate(zip(predictions, references, strict=False)):
            refs = [refs] if isinstance(refs, str) else list(refs)
            rec = self._record(str(p), [str(r) for r in refs], **{k: v[j] for k, v in extras.items()})
            rec["id"] = None if ids is None else _plain_id(ids[j])
            recs.append(rec)
        if recs:
            self.records.append(encode_records(recs).to(self.device))

    def gathered(self) -> list[dict]:
        """All records (every rank's, once synchronised), de-duplicated by id."""
        return dedup_by_id(decode_records(self.records))

    def compute(self):
        return self._score(self.gathered())

    def _score(self, records: list[dict]):
        raise NotImplementedError
