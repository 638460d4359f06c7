"""Formant speech synthesis through libespeak-ng (ctypes), for synthetic voice-cloning data.

The shared library and its ``espeak-ng-data`` folder come from the ``espeakng-loader`` wheel, so no
system espeak-ng is needed.  espeak-ng keeps global state and is not thread-safe: one engine is
initialised lazily per process and every call into it is serialised by a module lock.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["Voice", "demo_voices", "espeak_available", "synthesize"]

# --- constants from espeak-ng's speak_lib.h -------------------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it espeak calls exit(1) when its data cannot be loaded
_POS_CHARACTER = 1
_CHARS_AUTO = 0
_SSML = 0x10
_ENDPAUSE = 0x1000
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_EE_OK = 0
_RATE_MIN, _RATE_MAX = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM

# espeak ends a synchronous run as soon as its command queue is empty, even while a voice's echo is
# still ringing; the unplayed tail would leak into the start of the next utterance. Synthesising a
# short pause right afterwards plays that tail out so it stays with the utterance it belongs to.
_DRAIN_SSML = b'<speak><break time="300ms"/></speak>'

_TRIM_THRESHOLD = 32 / 32768  # about -60 dBFS: below audibility for espeak's output level
_TRIM_PAD_S = 0.01

# Synthesis callback: int cb(short *wav, int numsamples, espeak_EVENT *events).
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _EspeakVoice(ctypes.Structure):
    # Layout of espeak_VOICE; only name/languages/identifier are read.
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # sequence of (priority byte, NUL-terminated code), ended by a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


@dataclass(frozen=True)
class Voice:
    """An espeak voice: ``name`` is a language code, voice file or voice name, optionally ``+variant``
    (e.g. ``"en-us"``, ``"en-gb+f3"``); ``rate`` in words per minute (80..450); ``pitch`` and
    ``pitch_range`` on espeak's 0..100 scale (50 = the voice's default)."""

    name: str
    rate: int = 160
    pitch: int = 50
    pitch_range: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Voice name must be a non-empty string, got {self.name!r}")
        if not _RATE_MIN <= self.rate <= _RATE_MAX:
            raise ValueError(f"Voice rate must be in [{_RATE_MIN}, {_RATE_MAX}] wpm, got {self.rate}")
        for field in ("pitch", "pitch_range"):
            value = getattr(self, field)
            if not 0 <= value <= 100:
                raise ValueError(f"Voice {field} must be in [0, 100], got {value}")


class _Engine:
    """One initialised libespeak-ng instance. Callers must hold ``_lock`` around every method."""

    def __init__(self, lib_path: str | None = None, data_path: str | None = None) -> None:
        if lib_path is None or data_path is None:
            try:
                import espeakng_loader
            except ImportError as exc:
                raise RuntimeError(
                    "espeak-ng is unavailable: the 'espeakng-loader' package (which ships libespeak-ng and "
                    "espeak-ng-data) is not installed; install espeakng-loader==0.2.4"
                ) from exc
            package_dir = Path(espeakng_loader.__file__).parent
            # Computed here rather than via get_data_path(), which raises a bare error when the folder is missing.
            lib_path = lib_path or espeakng_loader.get_library_path()
            data_path = data_path or str(package_dir / "espeak-ng-data")

        data_dir = Path(data_path)
        if not (data_dir / "phontab").is_file() or not (data_dir / "voices").is_dir():
            raise RuntimeError(f"espeak-ng is unavailable: data folder {data_dir} is missing or lacks phontab/voices")
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise RuntimeError(f"espeak-ng is unavailable: cannot load shared library {lib_path}: {exc}") from exc

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))

        # The data path is passed explicitly so a stray ESPEAK_DATA_PATH or system install cannot win.
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(data_dir), _INITIALIZE_DONT_EXIT)
        # With DONT_EXIT a data failure only shows up as a bad rate or an unusable default voice.
        if sample_rate <= 0 or lib.espeak_SetVoiceByName(b"en") != _EE_OK:
            raise RuntimeError(f"espeak-ng failed to initialise with data folder {data_dir} (returned {sample_rate})")

        self._lib = lib
        self.sample_rate = int(sample_rate)
        self._chunks: list[bytes] = []
        # Kept on the instance: if the CFUNCTYPE object were garbage collected, espeak would call freed memory.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self._voices = self._index_voices()
        variant_dir = data_dir / "voices" / "!v"
        variant_files = variant_dir.iterdir() if variant_dir.is_dir() else ()
        self._variants = {p.name.lower(): p.name for p in variant_files if p.is_file()}

    def _on_audio(self, wav: ctypes._Pointer, num_samples: int, _events: int | None) -> int:
        # A NULL buffer marks the end of synthesis; 0 tells espeak to continue.
        if wav and num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        return 0

    def _index_voices(self) -> dict[str, str]:
        """Map lower-cased identifiers, file names, language codes and display names to voice identifiers."""
        by_id: dict[str, str] = {}
        by_file: dict[str, str] = {}
        by_lang: dict[str, tuple[int, str]] = {}
        by_name: dict[str, str] = {}
        table = self._lib.espeak_ListVoices(None)
        i = 0
        while table[i]:
            entry = table[i].contents
            i += 1
            identifier = (entry.identifier or b"").decode("utf-8", "replace")
            if not identifier or identifier.startswith("mb/"):  # mbrola voices need databases we do not ship
                continue
            by_id.setdefault(identifier.lower(), identifier)
            by_file.setdefault(identifier.rsplit("/", 1)[-1].lower(), identifier)
            if entry.name:
                by_name.setdefault(entry.name.decode("utf-8", "replace").lower(), identifier)
            ptr = entry.languages
            while ptr:
                priority = ctypes.string_at(ptr, 1)[0]
                if priority == 0:
                    break
                raw_code = ctypes.string_at(ptr + 1)
                ptr += len(raw_code) + 2  # priority byte + code + NUL
                code = raw_code.decode("utf-8", "replace").lower()
                # The same code is offered by several voices; espeak's own choice is the lowest priority value.
                if code not in by_lang or priority < by_lang[code][0]:
                    by_lang[code] = (priority, identifier)
        # Later sources win: an exact identifier beats a file name, which beats a language code or display name.
        index = dict(by_name)
        index.update({code: ident for code, (_, ident) in by_lang.items()})
        index.update(by_file)
        index.update(by_id)
        return index

    def resolve(self, name: str) -> bytes:
        """Turn a user voice name into the ``identifier[+variant]`` string espeak loads without guessing."""
        base, _, variant = name.strip().partition("+")
        identifier = self._voices.get(base.strip().lower())
        if identifier is None:
            raise ValueError(f"Unknown espeak voice {name!r}: {base!r} is not a known language, voice file or name")
        if not variant:
            return identifier.encode()
        # espeak silently ignores a missing variant file, so check it here to fail loudly instead.
        variant_file = self._variants.get(variant.strip().lower())
        if variant_file is None:
            raise ValueError(f"Unknown espeak voice variant {variant!r} in voice {name!r}")
        return f"{identifier}+{variant_file}".encode()

    def synthesize(self, text: bytes, voice: Voice) -> npt.NDArray[np.int16]:
        """Render UTF-8 ``text`` with ``voice``; returns int16 samples, shape (num_samples,)."""
        lib = self._lib
        voice_id = self.resolve(voice.name)
        # Re-selecting the voice every call also clears espeak's echo buffer, which otherwise carries
        # the previous utterance's reverb into this one.
        if lib.espeak_SetVoiceByName(voice_id) != _EE_OK:
            raise ValueError(f"espeak could not load voice {voice.name!r} (resolved to {voice_id.decode()!r})")
        for param, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch), (_PARAM_RANGE, voice.pitch_range)):
            if lib.espeak_SetParameter(param, value, 0) != _EE_OK:
                raise RuntimeError(f"espeak_SetParameter({param}, {value}) failed")

        self._chunks = []
        try:
            # ENDPAUSE lets the last clause finish with its natural pause instead of a hard cut.
            status = lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_AUTO | _ENDPAUSE, None, None)
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with status {status}")
            status = lib.espeak_Synth(_DRAIN_SSML, len(_DRAIN_SSML) + 1, 0, _POS_CHARACTER, 0, _SSML, None, None)
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth (drain) failed with status {status}")
            lib.espeak_Synchronize()  # no-op in synchronous mode; kept so a retrieval-mode switch stays correct
            return np.frombuffer(b"".join(self._chunks), dtype=np.int16)
        finally:
            self._chunks = []


_lock = threading.Lock()
_engine: _Engine | None = None
_engine_error: RuntimeError | None = None


def _before_fork() -> None:
    # Holding the lock across fork() guarantees the child never inherits espeak mid-synthesis.
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    # The child has a single thread, so a fresh lock is correct; the inherited engine state is intact
    # because no synthesis could be running at fork time.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def _get_engine() -> _Engine:
    """Return the process-wide engine, initialising it on first use. Caller must hold ``_lock``."""
    global _engine, _engine_error
    if _engine is None:
        if _engine_error is not None:  # re-initialising after a failure would only repeat it and leak
            raise _engine_error
        try:
            _engine = _Engine()
        except RuntimeError as exc:
            _engine_error = exc
            raise
    return _engine


def espeak_available() -> bool:
    """True if libespeak-ng loads and initialises in this process; never raises."""
    try:
        with _lock:
            _get_engine()
        return True
    except Exception:
        return False


def _trim(samples: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float32]:
    """Cut near-digital silence at both ends, keeping a short pad; shape (n,) -> (m,), m <= n."""
    loud = np.flatnonzero(np.abs(samples) > _TRIM_THRESHOLD)
    if loud.size == 0:
        return samples  # punctuation-only text can legitimately be silent; keep it rather than return nothing
    pad = int(_TRIM_PAD_S * sample_rate)
    return samples[max(int(loud[0]) - pad, 0) : int(loud[-1]) + 1 + pad]


def synthesize(text: str, voice: Voice) -> tuple[npt.NDArray[np.float32], int]:
    """Speak ``text`` with ``voice``.

    Returns ``(waveform, sample_rate)``: waveform is float32 mono, shape (num_samples,), values in [-1, 1),
    leading/trailing silence trimmed to about 10 ms; sample_rate is espeak's native rate (22050 Hz).
    Raises ValueError for empty text or an unknown voice, RuntimeError if espeak-ng is unavailable.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters")  # C would silently truncate there
    if not isinstance(voice, Voice):
        raise TypeError(f"voice must be a Voice, got {type(voice).__name__}")
    encoded = text.encode("utf-8")
    with _lock:
        engine = _get_engine()
        pcm = engine.synthesize(encoded, voice)
        sample_rate = engine.sample_rate
    waveform = pcm.astype(np.float32) / np.float32(32768.0)
    return _trim(waveform, sample_rate), sample_rate


# Variants in the order they are handed out, alternating male/female so small n is already varied.
_DEMO_VARIANTS = ("m1", "f1", "m3", "f2", "m2", "f3", "m4", "f4", "m5", "f5", "m6", "m7")
_DEMO_ACCENTS = ("en-us", "en-gb")
MAX_DEMO_VOICES = 2 * len(_DEMO_VARIANTS) * len(_DEMO_ACCENTS)


def demo_voices(n: int) -> list[Voice]:
    """Return ``n`` (0..48) distinct, deterministic English voices.

    Each of the first 24 is a different (variant, accent) pair with its own pitch and rate; voices 24..47
    reuse those pairs in a second register (shifted pitch and rate).
    """
    if not 0 <= n <= MAX_DEMO_VOICES:
        raise ValueError(f"n must be in [0, {MAX_DEMO_VOICES}], got {n}")
    voices = []
    for i in range(n):
        register, slot = divmod(i, len(_DEMO_VARIANTS) * len(_DEMO_ACCENTS))
        variant = _DEMO_VARIANTS[slot % len(_DEMO_VARIANTS)]
        # Flip the accent pattern on the second pass over the variants so each variant gets both accents.
        accent = _DEMO_ACCENTS[(slot // 2 + slot // len(_DEMO_VARIANTS)) % 2]
        female = variant.startswith("f")
        pitch = (62 if female else 36) + 6 * (slot % 3)
        pitch += (-10 if female else 10) * register
        rate = 140 + 12 * ((slot * 3) % 5) + 25 * register
        voices.append(Voice(name=f"{accent}+{variant}", rate=rate, pitch=pitch, pitch_range=40 + 10 * (slot % 4)))
    return voices
