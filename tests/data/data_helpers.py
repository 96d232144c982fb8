"""Helpers shared by the data tests (a unique module name: every tests/ folder has a conftest)."""

import torch


def assert_batch_contract(batch: dict, tokenizer, *, image_size: int) -> None:
    """The batch dict of docs/architecture.md: keys, dtypes, shapes, special tokens, padding."""
    b = len(batch["ids"])
    assert {"pixel_values", "input_ids", "attention_mask", "labels", "ids", "references", "source_text"} <= set(batch)
    pv = batch["pixel_values"]
    assert pv.dtype == torch.float32 and tuple(pv.shape) == (b, 3, image_size, image_size)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.dtype == mask.dtype == labels.dtype == torch.long
    assert ids.shape == mask.shape and ids.shape[0] == labels.shape[0] == b
    pad = tokenizer.pad_token_id
    for row, m, lab in zip(ids.tolist(), mask.tolist(), labels.tolist(), strict=False):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)  # right padding
        assert row[n:] == [pad] * (len(row) - n)
        if tokenizer.cls_token_id is not None:
            assert row[0] == tokenizer.cls_token_id
        assert row[n - 1] == (tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id)
        t = sum(1 for x in lab if x != -100)
        assert lab[t:] == [-100] * (len(lab) - t) and t >= 1
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        assert lab[t - 1] == eos
        assert tokenizer.bos_token_id is None or tokenizer.bos_token_id not in lab  # no BOS in labels
    assert all(isinstance(r, list) and r and all(isinstance(s, str) for s in r) for r in batch["references"])
    assert len(batch["references"]) == len(batch["source_text"]) == b
