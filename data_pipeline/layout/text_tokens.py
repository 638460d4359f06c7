"""Text tokenizer and the Higgs Audio v2 special tokens.

The published model uses the Llama-3 tokenizer with audio tokens at fixed ids (<|AUDIO_OUT|> 128016, ...). Random-init
presets use a small byte-level BPE tokenizer carrying the same special-token *names*, so every id is looked up by name
and checked against the model config instead of being hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from data_pipeline.errors import InputError

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
AUDIO_IN_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
AUDIO_OUT_BOS = "<|audio_out_bos|>"
AUDIO_IN = "<|AUDIO|>"
AUDIO_OUT = "<|AUDIO_OUT|>"
# The published tokenizer has no dedicated name for the delay token; transformers' processor uses this reserved one.
AUDIO_DELAY = "<|reserved_special_token_6|>"
SCENE_START = "<|scene_desc_start|>"
SCENE_END = "<|scene_desc_end|>"

SPECIAL_TOKENS: tuple[str, ...] = (
    BEGIN_OF_TEXT,
    END_OF_TEXT,
    START_HEADER,
    END_HEADER,
    EOT,
    AUDIO_IN_BOS,
    AUDIO_EOS,
    AUDIO_OUT_BOS,
    AUDIO_IN,
    AUDIO_OUT,
    AUDIO_DELAY,
    SCENE_START,
    SCENE_END,
)

# Fixed training text for the random-init tokenizer: the tokenizer must not depend on whatever corpus a run uses.
_TOKENIZER_SEED_TEXT = (
    "The quick brown fox jumps over the lazy dog. A voice is a sound made by a person speaking or singing. "
    "Generate audio following instruction. Please read the following sentence in a calm and clear voice. "
    "Numbers like one, two, three, four, five, six, seven, eight, nine and ten are common in speech. "
    "She sells sea shells by the sea shore; he reads books in the morning and walks home at night. "
    "What time is it? It is half past seven, and the weather is bright, cold and windy today!"
)


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the tokens the voice-cloning layout needs, resolved by name from a tokenizer."""

    begin_of_text: int
    end_of_text: int
    start_header: int
    end_header: int
    eot: int
    audio_in_bos: int
    audio_eos: int
    audio_out_bos: int
    audio_in: int
    audio_out: int
    audio_delay: int
    scene_start: int
    scene_end: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, delay_token: str = AUDIO_DELAY) -> SpecialTokenIds:
        names = {
            "begin_of_text": BEGIN_OF_TEXT,
            "end_of_text": END_OF_TEXT,
            "start_header": START_HEADER,
            "end_header": END_HEADER,
            "eot": EOT,
            "audio_in_bos": AUDIO_IN_BOS,
            "audio_eos": AUDIO_EOS,
            "audio_out_bos": AUDIO_OUT_BOS,
            "audio_in": AUDIO_IN,
            "audio_out": AUDIO_OUT,
            "audio_delay": delay_token,
            "scene_start": SCENE_START,
            "scene_end": SCENE_END,
        }
        vocab = tokenizer.get_vocab()
        missing = [tok for tok in names.values() if tok not in vocab]
        if missing:
            raise InputError(f"tokenizer {tokenizer.name_or_path!r} lacks the Higgs Audio special tokens {missing}")
        ids = {field: vocab[tok] for field, tok in names.items()}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids["end_of_text"]
        return cls(**ids, pad=pad)


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer (any UTF-8 text encodes) with the Higgs special tokens at the end."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TOKENIZER_SEED_TEXT] * 4, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BEGIN_OF_TEXT,
        eos_token=EOT,
        pad_token=END_OF_TEXT,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory only (never the hub)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
