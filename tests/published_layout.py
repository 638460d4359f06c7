"""Tiny folders with the published Higgs Audio v2 layout: a transformers-format model folder whose config.json has the
published key set and token ids (dims shrunk), a tokenizer with the published special tokens at the published ids
(128000-128255 of a 128256 vocabulary), and a tiny Higgs codec folder with the published 24 kHz / 8 x 1024 / 25 Hz
geometry. Random weights; nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration, PreTrainedTokenizerFast

from data_pipeline.codecs import tiny_higgs
from data_pipeline.layout.text_tokens import BEGIN_OF_TEXT, END_OF_TEXT, EOT, build_tiny_tokenizer
from ds_train.model.published import LAYOUT_KEYS, SPECIAL_TOKEN_IDS

FIRST_SPECIAL_ID = 128000
VOCAB_SIZE = 128256
# Higgs Audio's names for Llama-3 ids that are not a renamed reserved token (tokenizer_config.json of the release).
_NAMED = {
    128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>", 128017: "<|recipient|>",
    128020: "<|generation_instruction_start|>", 128021: "<|generation_instruction_end|>", 128022: "<SE>",
    128023: "</SE>", 128024: "<SE_s>", 128025: "</SE_s>", 128026: "<SE_e>", 128027: "</SE_e>",
    128002: "<|reserved_special_token_0|>", 128003: "<|reserved_special_token_1|>",
    128005: "<|reserved_special_token_2|>",
}  # fmt: skip
TINY_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16)  # fmt: skip


def _special_names() -> list[str]:
    """The 256 special tokens in id order: the layout's names at their published ids, the rest as released."""
    by_id = {**_NAMED, **{i: name for name, i in SPECIAL_TOKEN_IDS.items()}}
    return [by_id.get(i, f"<|reserved_special_token_{i - 128008}|>") for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE)]


def published_layout_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (the tiny one's merges) padded with unused entries to 128000 regular ids, then the
    256 special tokens at 128000-128255 as the published tokenizer has them."""
    base = json.loads(build_tiny_tokenizer()._tokenizer.to_str())["model"]
    vocab = {tok: i for tok, i in base["vocab"].items() if i < len(base["vocab"])}
    vocab = {tok: i for i, tok in enumerate(sorted(vocab, key=vocab.get))}
    vocab.update({f"<unused_{i}>": i for i in range(len(vocab), FIRST_SPECIAL_ID)})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in base["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_special_names())
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BEGIN_OF_TEXT, eos_token=EOT, pad_token=END_OF_TEXT)


def published_layout_config() -> HiggsAudioV2Config:
    layout = {k: v for k, v in LAYOUT_KEYS.items() if k != "model_type"}
    return HiggsAudioV2Config(**layout, **TINY_DIMS)


def make_published_layout_model(folder: Path, seed: int = 0) -> Path:
    """A random-init model folder (config.json, safetensors, tokenizer files) with the published layout."""
    torch.manual_seed(seed)
    HiggsAudioV2ForConditionalGeneration(published_layout_config()).save_pretrained(str(folder))
    published_layout_tokenizer().save_pretrained(str(folder))
    return folder


def make_published_layout_codec(folder: Path, seed: int = 0) -> Path:
    tiny_higgs(seed=seed).save_pretrained(str(folder))
    return folder
