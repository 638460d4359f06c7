"""What TensorBoard shows first: the custom-scalars layout (groups in the order a person looks for them, health
counters that are not zero before those that are), and the run card at step 0 (config, versions, resolved paths as
text, and the config as hparams)."""

from __future__ import annotations

import json
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

from ds_train.config import RunConfig

GROUPS = ("train", "eval", "cloning", "perf")  # the custom-scalars categories, in this order; health comes last
COUNTER_GROUPS = ("health", "monitor")  # failure and skip counters: mostly 0, so the non-zero ones go first
# Tags drawn on one chart with their first one (a ceiling, a floor, the value before a clamp, the train curve).
COMPANIONS = {
    "train/lr": ("train/lr_scheduled",),
    "eval/loss": ("train/loss",),
    "cloning/gen_speaker_sim": ("cloning/gen_speaker_sim_target",),
    "cloning/gen_wer": ("cloning/gen_wer_target",),
    "cloning/conditioning_gain": ("cloning/conditioning_gain_codes", "cloning/conditioning_gain_whisper"),
}
FIRST = ("train/loss", "train/grad_norm", "train/grad_clip_scale", "train/lr", "eval/loss", "cloning/conditioning_gain",
         "cloning/gen_speaker_sim", "cloning/gen_wer", "perf/tokens_per_s")  # fmt: skip
VERSIONED = ("torch", "deepspeed", "transformers", "tensorboard", "descript-audio-codec", "resemblyzer")


def _chart(tags: list[str]) -> list:
    return ["Multiline", [f"^{re.escape(t)}$" for t in tags]]


def scalar_layout(tags: set[str], nonzero: set[str]) -> dict[str, dict[str, list]]:
    """Custom-scalars layout {category: {chart title: ["Multiline", [tag regexes]]}} of the scalar `tags` logged so
    far: train, eval, cloning, perf (the headline tags first, companions on their chart, a series per codebook or
    part on one chart), then the health/ and monitor/ counters, those in `nonzero` first and the rest on one chart."""
    layout: dict[str, dict[str, list]] = {}
    drawn = {c for t in tags if t in COMPANIONS for c in COMPANIONS[t] if c.split("/")[0] == t.split("/")[0]}
    for group in GROUPS:
        charts: dict[str, list] = {}
        members = sorted((t for t in tags if t.startswith(f"{group}/")),
                         key=lambda t: (FIRST.index(t) if t in FIRST else len(FIRST), t))  # fmt: skip
        for tag in members:
            family = tag.rsplit("/", 1)[0]
            numbered = re.fullmatch(r"(.*_cb)\d+", tag)
            if family != group:  # group/name/k: one chart per family (per codebook, per part)
                charts.setdefault(f"{family}/*", ["Multiline", [f"^{re.escape(family)}/"]])
            elif numbered:  # name_cb<k>: per codebook
                charts.setdefault(f"{numbered[1]}*", ["Multiline", [f"^{re.escape(numbered[1])}\\d+$"]])
            elif tag not in drawn:
                shown = [tag, *(c for c in COMPANIONS.get(tag, ()) if c in tags)]
                charts[" vs ".join(shown)] = _chart(shown)
        if charts:
            layout[group] = charts
    counters = sorted(t for t in tags if t.split("/")[0] in COUNTER_GROUPS)
    if counters:
        charts = {t: _chart([t]) for t in counters if t in nonzero}
        zeros = [t for t in counters if t not in nonzero]
        if zeros:
            charts[f"{len(zeros)} counters at 0 so far"] = _chart(zeros)
        layout["health (non-zero first)"] = charts
    return layout


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "ds_train commit": _git_commit()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_card(cfg: RunConfig, paths: dict[str, Path | str | None], world_size: int, device: str) -> str:
    """Markdown for the TensorBoard text card `run/config` at step 0: resolved paths, versions, and the whole config."""
    rows = ["| path | value |", "|---|---|"]
    rows += [f"| {name} | `{value}` |" for name, value in paths.items() if value]
    rows += ["", "| version | |", "|---|---|", *(f"| {k} | {v} |" for k, v in versions().items())]
    rows += ["", f"{world_size} rank(s) on {device}", "", "run config:", ""]
    rows += ["    " + line for line in json.dumps(cfg.to_dict(), indent=2).splitlines()]
    return "\n".join(rows)


def hparams(cfg: RunConfig) -> dict[str, float | int | str | bool]:
    """The run config flattened to `section.key` -> a value the hparams plugin takes (others as text)."""
    flat: dict[str, float | int | str | bool] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat
