"""Packing: several tokenized conversations in one training row, so batches carry no padding between them.

Rows are filled best-fit-decreasing (each sample, longest first, goes into the fullest row it still fits in), so
the packing depends only on the samples and ``max_length``, and a resumed run packs the same rows. Each sample keeps
its own position ids (restarting at 0) and its first label is dropped (in a packed row it would be predicted from
the end of the previous conversation); ``packed_collate`` gives no attention mask, so the model attends inside each
conversation only. A sample longer than ``max_length`` is a row of its own.

>>> rows = pack_plan([5, 3, 4, 2, 6], max_length=8)
>>> rows
[[4, 3], [0, 1], [2]]
"""

import bisect

import datasets


def pack_plan(lengths: list[int], max_length: int) -> list[list[int]]:
    """Rows of sample indices (longest first in each), best fit decreasing; ties go to the lower index."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted: the fullest row that fits is found by bisection
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, row = free.pop(at)
            rows[row].append(i)
            bisect.insort(free, (room - n, row))
        else:
            rows.append([i])
            bisect.insort(free, (max(max_length - n, 0), len(rows) - 1))
    return rows


def pack(samples: datasets.Dataset, max_length: int) -> datasets.Dataset:
    """Tokenized samples (``input_ids``, ``labels``, ``label_tokens``, ``uid``) packed into rows of at most
    ``max_length`` tokens, with ``position_ids``, the rows' ``label_tokens`` and their samples' uids."""
    columns = samples.select_columns(["uid", "input_ids", "labels", "label_tokens"]).to_dict()
    plan = pack_plan([len(ids) for ids in columns["input_ids"]], max_length)
    out: dict[str, list] = {"uid": [], "input_ids": [], "labels": [], "position_ids": [], "label_tokens": [],
                            "length": [], "samples": []}
    for row in plan:
        ids, labels, positions = [], [], []
        for i in row:
            sample_labels = list(columns["labels"][i])
            sample_labels[0] = -100  # not predicted from the previous conversation's last token
            ids += columns["input_ids"][i]
            labels += sample_labels
            positions += range(len(columns["input_ids"][i]))
        out["uid"].append("+".join(columns["uid"][i] for i in row))
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["position_ids"].append(positions)
        out["label_tokens"].append(sum(columns["label_tokens"][i] for i in row))
        out["length"].append(len(ids))
        out["samples"].append(len(row))
    return datasets.Dataset.from_dict(out)
