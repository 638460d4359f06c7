"""The voice-cloning model: transformers' HiggsAudioV2ForConditionalGeneration plus a Whisper reference-audio tower.

The Whisper tower (WhisperEncoder layers -> 2x average pooling to 25 Hz -> final layer norm -> linear projector) turns
the reference waveform's features into LLM-width embeddings that replace the token embeddings at `<|AUDIO|>`
positions. Codec codes enter the LLM through its own `embed_audio_tokens` at `<|AUDIO_OUT|>` / delay positions.

The loss is computed here, only at positions whose next token is labelled, so no [B, L, C*K] logit tensor is built.
Position t predicts the token at t+1 (inputs and labels arrive aligned; the shift happens once, here). With
`loss_weights` (training) the loss is this micro-batch's share of the step's token-weighted objective
(ds_train/model/loss.py); without, each codebook's mean cross-entropy summed over codebooks (transformers' reduction).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import HiggsAudioV2ForConditionalGeneration, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from data_pipeline.errors import InputError
from data_pipeline.types import IGNORE_INDEX
from ds_train.model.loss import LossWeights

PROJECTOR_FILE = "projector.safetensors"
# Whisper chunks `remember_whisper` keeps (about 1 MB each for a 3B model in bf16: 150 tokens x 3072 x 2 bytes)
WHISPER_MEMO_CHUNKS = 2048


def feature_digests(features: torch.Tensor) -> list[bytes]:
    """Whisper features [N, M, T] -> a digest of each chunk, exact and cheap: a chunk's frames past its audio all equal
    its last frame, so only the frames up to the last one that differs are hashed, with that last frame, where the
    constant tail starts, the shape and dtype (a 3 s reference: ~300 of 3000 frames; hashing all 3000 was most of the
    Whisper cost of an evaluation)."""
    last = features[..., -1:]  # [N, M, 1]
    differs = (features != last).any(1)  # [N, T]
    frames = features.shape[-1]
    # index of each chunk's last differing frame + 1 (0 when every frame equals the last)
    ends = (frames - differs.flip(-1).int().argmax(-1)) * differs.any(-1)
    digests = []
    for chunk, end in zip(features, ends.tolist(), strict=True):
        digest = hashlib.blake2b(digest_size=16)
        for part in (chunk[:, :end], chunk[:, -1]):
            digest.update(part.contiguous().view(torch.uint8).cpu().numpy().tobytes())
        digest.update(f"{end} {tuple(chunk.shape)} {chunk.dtype}".encode())
        digests.append(digest.digest())
    return digests


class WhisperTower(nn.Module):
    """features [N, 128, 3000] -> embeddings [N, 750, llm_hidden] (25 Hz).

    The order of the original Higgs Audio tower (boson-ai/higgs-audio's HiggsAudioEncoder): Whisper conv + layers
    [N, 1500, d] -> 2x average pooling [N, 750, d] -> the encoder's final layer norm -> linear projector. Pooling
    before the norm hands the projector unit-scale tokens (averaging normed frames would shrink them wherever adjacent
    frames disagree). It runs as a forward pre-hook on the encoder's `layer_norm`, so the parameter names stay those
    of a plain WhisperEncoder: Whisper checkpoints and exported towers load unchanged."""

    def __init__(self, encoder: WhisperEncoder, llm_hidden_size: int) -> None:
        super().__init__()
        if getattr(encoder, "_pools_before_norm", False):
            raise ValueError("this WhisperEncoder already belongs to a WhisperTower (it would pool twice)")
        self.encoder = encoder
        self.pool = nn.AvgPool1d(kernel_size=2, stride=2)
        self.projector = nn.Linear(encoder.config.d_model, llm_hidden_size)
        encoder.layer_norm.register_forward_pre_hook(self._pool_before_norm)
        encoder._pools_before_norm = True

    def _pool_before_norm(self, _norm: nn.Module, args: tuple) -> tuple:
        hidden = args[0]  # [N, 1500, d_model]: the last encoder layer's output
        return (self.pool(hidden.transpose(1, 2)).transpose(1, 2), *args[1:])  # [N, 750, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        dtype = self.projector.weight.dtype
        hidden = self.encoder(features.to(dtype)).last_hidden_state  # [N, 750, d_model]: pooled, then normed
        return self.projector(hidden)


def load_whisper_encoder(path: str | Path) -> WhisperEncoder:
    """Encoder weights from a local Whisper checkpoint directory (config.json + *.safetensors)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"whisper.path {path} is not a Whisper checkpoint folder: it has no config.json")
    config = WhisperConfig.from_pretrained(str(path), local_files_only=True)
    if config.num_mel_bins != 128:
        raise InputError(
            f"whisper.path {path}: the Whisper tower needs 128 mel bins (large-v3 style), the checkpoint has "
            f"{config.num_mel_bins}; use a large-v3 checkpoint, or leave whisper.path unset for whisper.preset"
        )
    encoder = WhisperEncoder(config)
    state: dict[str, torch.Tensor] = {}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"whisper.path {path}: no .safetensors weights (save the model with safetensors)")
    for file in files:
        for key, value in load_file(str(file)).items():
            for prefix in ("model.encoder.", "encoder.", ""):
                if key.startswith(prefix) and (key[len(prefix) :] in encoder.state_dict()):
                    state[key[len(prefix) :]] = value
                    break
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing:
        raise InputError(
            f"whisper.path {path}: the Whisper encoder weights lack {len(missing)} tensors, e.g. {missing[:3]}; "
            "is it a Whisper checkpoint of the size its config.json describes?"
        )
    return encoder


@dataclass
class VoiceCloningOutput:
    """loss: scalar to backpropagate (see the module docstring). audio_loss / text_loss: this micro-batch's mean
    reduction, detached. Per-codebook tensors are [C] and detached: summed cross-entropy, correct top-1, labelled
    tokens; text_ce_sum / text_count likewise for the text labels (0 without the text head)."""

    @property
    def audio_in_positions(self) -> int:
        """<|AUDIO|> positions of the batch that received a Whisper embedding."""
        return int(self.audio_in_placed.sum())

    loss: torch.Tensor
    audio_loss: torch.Tensor
    text_loss: torch.Tensor | None
    codebook_losses: torch.Tensor  # [C] mean cross-entropy per codebook in this micro-batch
    codebook_ce_sum: torch.Tensor
    codebook_correct: torch.Tensor
    codebook_count: torch.Tensor
    text_ce_sum: float
    text_count: int
    audio_in_placed: torch.Tensor  # [B] <|AUDIO|> positions that received a Whisper embedding, per row
    predicted_codes: torch.Tensor  # [N, C] teacher-forced argmax at the N predicted frames, row-major over the batch
    predicted_rows: torch.Tensor  # [B] how many of the N rows belong to each sample


class VoiceCloningModel(nn.Module):
    """Wraps the LLM and the optional Whisper tower; forward takes the collator's batch."""

    def __init__(
        self, llm: HiggsAudioV2ForConditionalGeneration, whisper: WhisperTower | None, audio_in_token_id: int
    ) -> None:
        super().__init__()
        self.llm = llm
        self.whisper = whisper
        self.audio_in_token_id = audio_in_token_id
        self._pending_audio_in: tuple[torch.Tensor, torch.Tensor] | None = None
        self._audio_in_used: list[int] = []  # per batch row: how many of its <|AUDIO|> embeddings are placed
        self._whisper_memo: dict[tuple[bytes, int], torch.Tensor] | None = None  # see `remember_whisper`
        self._whisper_memo_limit = 0
        # The transformers model embeds input_ids itself; a hook on its embedding swaps in the Whisper outputs.
        self.audio_in_hook = self.llm.model.embed_tokens.register_forward_hook(self._inject_audio_in)

    @property
    def config(self):
        return self.llm.config

    def _inject_audio_in(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Replace the embeddings at the <|AUDIO|> ids of the ids being embedded, taking each row's Whisper
        embeddings in order. Matching ids (not a one-shot mask over the whole prompt) lets generation embed the prompt
        in any number of chunks (transformers' `prefill_chunk_size`): each chunk gets the embeddings of its own
        <|AUDIO|> positions."""
        ids = args[0] if args else None
        if self._pending_audio_in is None or ids is None or ids.dim() != 2:
            return output
        positions, embeds = self._pending_audio_in
        here = ids == self.audio_in_token_id  # [B, l]
        if not bool(here.any()):
            return output
        if here.shape[0] != positions.shape[0]:
            raise ValueError(f"Whisper embeddings were prepared for {positions.shape[0]} rows, got {here.shape[0]}")
        totals = positions.sum(1).tolist()
        starts = [sum(totals[:b]) for b in range(len(totals))]
        pieces = []
        for b, n in enumerate(here.sum(1).tolist()):
            used = self._audio_in_used[b]
            if used + n > totals[b]:
                raise ValueError(f"row {b}: {used + n} <|AUDIO|> ids embedded, only {totals[b]} Whisper embeddings")
            pieces.append(embeds[starts[b] + used : starts[b] + used + n])
            self._audio_in_used[b] = used + n
        return output.masked_scatter(here.unsqueeze(-1), torch.cat(pieces).to(output.dtype))

    def arm_audio_in(self, audio_in: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Embedding calls from now on place these Whisper embeddings (see `audio_in_embeddings`) at the <|AUDIO|> ids
        they embed, in order, whether the prompt is embedded at once or in chunks; None disarms."""
        self._pending_audio_in = audio_in
        self._audio_in_used = [0] * (0 if audio_in is None else audio_in[0].shape[0])

    def audio_in_embeddings(
        self, input_ids: torch.Tensor, features: torch.Tensor | None, token_counts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """-> (positions [B, L] bool, embeddings [num_positions, H]) or None when the batch has no <|AUDIO|>."""
        positions = input_ids == self.audio_in_token_id
        num_positions = int(positions.sum())
        if self.whisper is None or num_positions == 0:
            return None
        if features is None or token_counts is None or features.shape[0] == 0:
            raise ValueError(
                f"batch has {num_positions} <|AUDIO|> positions but no Whisper features "
                f"(shape {None if features is None else tuple(features.shape)})"
            )
        flat = self._whisper_tokens(features, token_counts)
        if flat.shape[0] != num_positions:
            raise ValueError(
                f"Whisper chunks fill {flat.shape[0]} positions but the batch has {num_positions} <|AUDIO|>"
            )
        return positions, flat

    @contextmanager
    def remember_whisper(self, max_chunks: int = WHISPER_MEMO_CHUNKS):
        """Within: each distinct Whisper chunk (same features, same token count) goes through the tower once; the
        first `max_chunks` are kept. For evaluation, where the weights stay put and the conditioning gain's swapped
        passes bring the eval set's own references back three more times (the tower was over half of their cost).
        Not under ZeRO-3: a rank that found all its chunks remembered would skip a forward whose weight gathers the
        other ranks wait for."""
        self._whisper_memo, self._whisper_memo_limit = {}, max_chunks
        try:
            yield
        finally:
            self._whisper_memo = None

    def _whisper_tokens(self, features: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
        """Whisper features [N, 128, 3000] -> the embeddings of each chunk's first token_counts[n] tokens, in chunk
        order [sum(token_counts), H]."""
        memo = self._whisper_memo
        if memo is None:
            embeds = self.whisper(features)  # [N, 750, H]
            positions = torch.arange(embeds.shape[1], device=embeds.device)
            return embeds[positions[None, :] < token_counts.to(embeds.device)[:, None]]
        counts = token_counts.tolist()
        keys = list(zip(feature_digests(features), counts, strict=True))
        missing = [n for n, key in enumerate(keys) if key not in memo]
        fresh = {}
        if missing:
            embeds = self.whisper(features[missing])
            fresh = {keys[n]: embeds[j, : counts[n]] for j, n in enumerate(missing)}
            for key, tokens in fresh.items():
                if len(memo) < self._whisper_memo_limit:
                    memo[key] = tokens
        return torch.cat([memo[key] if key in memo else fresh[key] for key in keys])

    def audio_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_input_ids: torch.Tensor,
        audio_input_ids_mask: torch.Tensor,
        audio_labels: torch.Tensor | None = None,
        whisper_input_features: torch.Tensor | None = None,
        whisper_token_counts: torch.Tensor | None = None,
        **_: object,
    ):
        """transformers' own forward (its logits [B, L, C*K] and, with audio_labels, its loss) on the same inputs,
        Whisper embeddings included. For checks and export comparisons; training uses `forward`."""
        self.arm_audio_in(self.audio_in_embeddings(input_ids, whisper_input_features, whisper_token_counts))
        try:
            return self.llm(
                input_ids=input_ids, attention_mask=attention_mask, audio_input_ids=audio_input_ids,
                audio_input_ids_mask=audio_input_ids_mask, audio_labels=audio_labels, use_cache=False,
            )  # fmt: skip
        finally:
            self.arm_audio_in(None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_input_ids: torch.Tensor,
        audio_input_ids_mask: torch.Tensor,
        audio_labels: torch.Tensor,
        labels: torch.Tensor | None = None,
        whisper_input_features: torch.Tensor | None = None,
        whisper_token_counts: torch.Tensor | None = None,
        loss_weights: LossWeights | None = None,
        **_: object,
    ) -> VoiceCloningOutput:
        """input_ids, attention_mask, labels [B, L]; audio_input_ids, audio_labels [B, F, C]; audio mask [B, F];
        loss_weights: the step's per-token weights (training), or None for the micro-batch mean."""
        cfg = self.llm.config
        self.arm_audio_in(self.audio_in_embeddings(input_ids, whisper_input_features, whisper_token_counts))
        try:
            hidden = self.llm.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                audio_input_ids=audio_input_ids,
                audio_input_ids_mask=audio_input_ids_mask,
                use_cache=False,
            ).last_hidden_state  # [B, L, H]
        finally:
            # what the hook really placed, per row (0 where it never ran: no Whisper, or the hook is gone)
            audio_in_placed = torch.tensor(self._audio_in_used or [0] * input_ids.shape[0], dtype=torch.long)
            self.arm_audio_in(None)

        # Codes of each placeholder position, aligned with input_ids: [B, L, C].
        placeholder = (input_ids == cfg.audio_token_id) | (input_ids == cfg.audio_delay_token_id)
        token_audio_labels = audio_labels.new_full((*input_ids.shape, cfg.num_codebooks), IGNORE_INDEX)
        token_audio_labels[placeholder] = audio_labels[audio_input_ids_mask]

        # Shift once: hidden state t predicts the codes at t+1.
        next_labels = token_audio_labels[:, 1:]
        predict_at = (next_labels != IGNORE_INDEX).any(-1)  # [B, L-1]
        audio_hidden = hidden[:, :-1][predict_at]  # [N, H]
        targets = next_labels[predict_at]  # [N, C]
        logits = self.llm.audio_lm_head(audio_hidden).float().view(-1, cfg.num_codebooks, cfg.codebook_size)
        per_token = F.cross_entropy(
            logits.reshape(-1, cfg.codebook_size), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view_as(targets)
        valid = targets != IGNORE_INDEX
        counts = valid.sum(0)  # [C]
        ce_sum = (per_token * valid).sum(0)  # [C]
        codebook_losses = ce_sum / counts.clamp(min=1)
        # Same reduction as transformers' HiggsAudioV2 loss: the sum over codebooks of each codebook's mean.
        audio_loss = codebook_losses.sum()
        predicted = logits.detach().argmax(-1)
        correct = ((predicted == targets) & valid).sum(0)
        if loss_weights is None:
            loss = audio_loss
        else:
            loss = (ce_sum * loss_weights.audio.to(ce_sum.device, ce_sum.dtype)).sum()

        text_loss, text_ce_sum, text_count = None, torch.zeros(()), 0
        if labels is not None and self.llm.text_lm_head is not None:
            next_text = labels[:, 1:]
            text_at = next_text != IGNORE_INDEX
            if text_at.any():
                text_logits = self.llm.text_lm_head(hidden[:, :-1][text_at]).float()
                text_ce_sum = F.cross_entropy(text_logits, next_text[text_at], reduction="sum")
                text_count = int(text_at.sum())
                text_loss = text_ce_sum / text_count
                loss = loss + (text_loss if loss_weights is None else text_ce_sum * loss_weights.text)
        return VoiceCloningOutput(
            loss=loss,
            audio_loss=audio_loss.detach(),
            text_loss=None if text_loss is None else text_loss.detach(),
            codebook_losses=codebook_losses.detach(),
            codebook_ce_sum=ce_sum.detach(),
            codebook_correct=correct.detach(),
            codebook_count=counts.detach(),
            text_ce_sum=float(text_ce_sum),
            text_count=text_count,
            audio_in_placed=audio_in_placed,
            predicted_codes=predicted,
            predicted_rows=predict_at.sum(1),
        )
