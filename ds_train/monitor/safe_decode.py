"""Decoding token ids for logs without ever raising (the "out of range integral type conversion" failure).

Ids are validated before any tokenizer or codec sees them: -100 and padding are dropped, anything outside the
vocabulary or codebook (negative, too large, non-integer, NaN) becomes a visible marker and is counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

INVALID_MARKER = "\u2047"  # "⁇", shown where an id could not be decoded


@dataclass
class DecodedText:
    text: str
    invalid: int  # ids refused (outside the vocabulary / not integers)
    dropped: int  # -100 and padding ids removed


def _as_int_list(ids) -> list[int | None]:
    """Any tensor/array/list -> python ints, None where an element is not a finite integer."""
    try:
        tensor = torch.as_tensor(ids).detach().cpu().reshape(-1)
    except Exception:  # noqa: BLE001 - logging input can be anything; never raise
        return [None]
    out: list[int | None] = []
    for value in tensor.tolist():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append(None)
        elif isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            out.append(None)
        else:
            out.append(int(value))
    return out


def safe_decode_text(tokenizer, ids, pad_id: int | None = None, ignore_id: int = -100) -> DecodedText:
    """Decode ids of any shape/dtype to text; never raises."""
    values = _as_int_list(ids)
    vocab = len(tokenizer)
    pieces: list[str] = []
    run: list[int] = []
    invalid = dropped = 0

    def flush() -> None:
        if run:
            try:
                pieces.append(tokenizer.decode(run))
            except Exception as err:  # noqa: BLE001
                pieces.append(f"<decode failed: {type(err).__name__}>")
            run.clear()

    for value in values:
        if value is not None and (value == ignore_id or value == pad_id):
            dropped += 1
        elif value is None or not 0 <= value < vocab:
            invalid += 1
            flush()
            pieces.append(INVALID_MARKER)
        else:
            run.append(value)
    flush()
    return DecodedText("".join(pieces), invalid, dropped)


def sanitize_codes(codes, codebook_size: int, fill: int = 0) -> tuple[torch.Tensor, int]:
    """codes [C, T] of any dtype -> int64 codes with every id outside [0, codebook_size) replaced by `fill`, and the
    number replaced. Never raises for numeric input."""
    tensor = torch.as_tensor(codes).detach().cpu()
    if tensor.is_floating_point():
        finite = torch.isfinite(tensor) & (tensor == tensor.round())
        tensor = torch.where(finite, tensor, torch.full_like(tensor, -1))
    tensor = tensor.to(torch.float64)  # compare in float so huge values cannot overflow a cast
    valid = (tensor >= 0) & (tensor < codebook_size)
    cleaned = torch.where(valid, tensor, torch.full_like(tensor, float(fill))).long()
    return cleaned, int((~valid).sum())
