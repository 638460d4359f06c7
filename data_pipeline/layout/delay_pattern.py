"""MusicGen-style delay pattern for multi-codebook audio codes, with stream BOS/EOS markers.

Codebook k is shifted right by k frames, so at frame t the model predicts codebook 0 of step t, codebook 1 of step
t-1, ... The holes the shift leaves are filled with the stream BOS (before) and stream EOS (after) ids.
"""

from __future__ import annotations

import torch


def add_stream_markers_and_delay(codes: torch.Tensor, stream_bos: int, stream_eos: int) -> torch.Tensor:
    """codes [C, T] (int) -> delayed frames [T + 2 + C - 1, C].

    One BOS and one EOS column are added around the codes before the shift, as Higgs Audio v2 does, so codebook k holds
    k + 1 BOS ids, the T codes, then C - k EOS ids.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be [num_codebooks, frames], got shape {tuple(codes.shape)}")
    num_codebooks, num_steps = codes.shape
    framed = torch.cat(
        [codes.new_full((num_codebooks, 1), stream_bos), codes.long(), codes.new_full((num_codebooks, 1), stream_eos)],
        dim=1,
    )
    total = num_steps + 2 + num_codebooks - 1
    out = codes.new_full((num_codebooks, total), stream_eos, dtype=torch.long)
    for k in range(num_codebooks):
        out[k, :k] = stream_bos
        out[k, k : k + num_steps + 2] = framed[k]
    return out.transpose(0, 1).contiguous()


def revert_delay(frames: torch.Tensor, with_markers: bool = True) -> torch.Tensor:
    """Inverse of `add_stream_markers_and_delay`: delayed frames [F, C] -> codes [C, F - C + 1 (- 2 if markers)]."""
    num_frames, num_codebooks = frames.shape
    steps = num_frames - num_codebooks + 1
    if steps <= 0:
        raise ValueError(f"{num_frames} frames cannot hold a delay pattern over {num_codebooks} codebooks")
    codes = torch.stack([frames[k : k + steps, k] for k in range(num_codebooks)], dim=0)
    return codes[:, 1:-1] if with_markers else codes
