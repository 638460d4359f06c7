"""The model wrapper: label alignment, the Whisper tower at <|AUDIO|> positions, gradients, and learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from data_pipeline.types import IGNORE_INDEX, AudioGeometry
from tests.helpers import tiny_model_and_batch

GEO = AudioGeometry(num_codebooks=4, codec_codebook_size=256)




def _manual_audio_loss(model, batch, shift: int) -> torch.Tensor:
    """Sum over codebooks of mean CE where the logits at position p - shift score the codes placed at position p."""
    cfg = model.llm.config
    with torch.no_grad():
        hidden = model.llm.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            audio_input_ids=batch["audio_input_ids"],
            audio_input_ids_mask=batch["audio_input_ids_mask"],
        ).last_hidden_state
        logits = model.llm.audio_lm_head(hidden).view(*hidden.shape[:2], cfg.num_codebooks, cfg.codebook_size)
    placeholder = (batch["input_ids"] == cfg.audio_token_id) | (batch["input_ids"] == cfg.audio_delay_token_id)
    per_codebook = [[] for _ in range(cfg.num_codebooks)]
    for b in range(batch["input_ids"].shape[0]):
        positions = placeholder[b].nonzero().flatten().tolist()
        frames = batch["audio_labels"][b][batch["audio_input_ids_mask"][b]]
        for pos, codes in zip(positions, frames, strict=True):
            for k in range(cfg.num_codebooks):
                if codes[k] != IGNORE_INDEX:
                    per_codebook[k].append(F.cross_entropy(logits[b, pos - shift, k][None], codes[k][None]))
    return sum(torch.stack(v).mean() for v in per_codebook)


def test_label_alignment_position_t_predicts_token_t_plus_1() -> None:
    model, batch, _ = tiny_model_and_batch(whisper=False)
    with torch.no_grad():
        ours = model(**batch).audio_loss
    # transformers' own loss (it shifts internally) agrees with ours...
    theirs = model.llm(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        audio_input_ids=batch["audio_input_ids"],
        audio_input_ids_mask=batch["audio_input_ids_mask"],
        audio_labels=batch["audio_labels"],
    ).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # ...and both equal the loss of "logits at t score the codes at t+1", not a copy (shift 0) or a double shift (2).
    torch.testing.assert_close(ours, _manual_audio_loss(model, batch, shift=1), rtol=1e-5, atol=1e-5)
    for wrong in (0, 2):
        assert abs(float(ours) - float(_manual_audio_loss(model, batch, shift=wrong))) > 1e-3


def test_whisper_outputs_land_at_audio_positions() -> None:
    model, batch, builder = tiny_model_and_batch(whisper=True)
    seen = {}
    model.llm.model.embed_tokens.register_forward_hook(lambda m, a, out: seen.setdefault("embeds", out.detach()))
    with torch.no_grad():
        out = model(**batch)
        tower = model.whisper(batch["whisper_input_features"])
    positions = batch["input_ids"] == builder.ids.audio_in
    counts = batch["whisper_token_counts"]
    assert (counts > 0).all() and batch["whisper_input_features"].shape[0] == 4
    valid = torch.arange(tower.shape[1])[None, :] < counts[:, None]
    torch.testing.assert_close(seen["embeds"][positions], tower[valid])
    assert out.audio_in_positions == int(positions.sum()) > 0
    plain = model.llm.model.embed_tokens.weight[batch["input_ids"][~positions]]
    torch.testing.assert_close(seen["embeds"][~positions], plain)


@pytest.mark.parametrize("trainable", [True, False])
def test_whisper_tower_gradients(trainable: bool) -> None:
    model, batch, _ = tiny_model_and_batch(whisper=True, trainable=trainable)
    model(**batch).loss.backward()
    conv_grad = model.whisper.encoder.conv1.weight.grad
    if trainable:
        assert conv_grad is not None and conv_grad.abs().sum() > 0
    else:
        assert conv_grad is None
    assert model.whisper.projector.weight.grad.abs().sum() > 0


def test_mismatched_whisper_features_raise() -> None:
    model, batch, _ = tiny_model_and_batch(whisper=True)
    batch["whisper_token_counts"] = batch["whisper_token_counts"] + 1
    with pytest.raises(ValueError, match="<\\|AUDIO\\|>"):
        model(**batch)
    batch.pop("whisper_input_features")
    with pytest.raises(ValueError, match="no Whisper features"):
        model(**batch)


def test_tiny_model_learns_a_fixed_batch() -> None:
    model, batch, _ = tiny_model_and_batch(whisper=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses: list[float] = []
    while len(losses) < 200 and (not losses or losses[-1] >= 0.1 * losses[0]):
        loss = model(**batch).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.1 * losses[0], f"loss only fell from {losses[0]:.3f} to {losses[-1]:.3f} in 200 steps"
