"""The training run. `Trainer(cfg)` builds everything a run config describes (data, model, DeepSpeed engine, the
components that carry state across a resume); `fit()` is the loop: train a step, log it, maybe evaluate, maybe save,
stop on a signal."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from ds_train.components.agreement import HaltVote
from ds_train.components.align import check_align, optimizer_param_groups, trained_part_norms
from ds_train.components.batch_stream import BatchStream
from ds_train.components.checkpoint import CHECKPOINT_SUBDIR, TOKENIZER_SUBDIR, Checkpointer, latest_tag
from ds_train.components.data import BatchPreparer, build_loader, build_run_data, build_sampler, resolve_codec
from ds_train.components.distributed import device_for, init_distributed
from ds_train.components.native_ops import CPU_ADAM, load_native_op
from ds_train.components.peers import PeerWatch, is_transport_error
from ds_train.components.preflight import check_cpu_adam, check_output_dir, uses_cpu_adam
from ds_train.components.rng import RNGState, rank_seed, seed_everything
from ds_train.components.schedule import warmup_cosine
from ds_train.components.stopping import GracefulStop
from ds_train.components.storage import check_shared_output_dir
from ds_train.config import RunConfig, resolve_deepspeed_config
from ds_train.errors import PeerLost
from ds_train.evaluation.conditioning import ConditioningGain, check_reference_ignored, true_reference_loss
from ds_train.evaluation.generation_eval import GenerationEvaluator
from ds_train.evaluation.held_out import BestEval, Evaluator
from ds_train.evaluation.intelligibility import Transcriber
from ds_train.evaluation.sample_logger import SampleLogger
from ds_train.evaluation.speaker_similarity import speaker_encoder
from ds_train.inference.generate import frame_budget
from ds_train.model.build import build_model, build_tokenizer
from ds_train.model.loss import LabelCounts, LossSums, LossWeights
from ds_train.monitor.batch_checks import BatchRules, collate_screened
from ds_train.monitor.grad_norms import fp32_masters, part_grad_norms
from ds_train.monitor.health import HealthCheck, HealthError
from ds_train.monitor.health_monitor import HealthMonitor, ScheduleReference, apply_lr_floor
from ds_train.monitor.metrics import MetricsProcessor, StepMeasurement, announced

log = logging.getLogger("ds_train")
STEP_RETRIES = 10  # steps whose every micro-batch had a non-finite loss, retried on the next data before halting


class _NoUsableMicroBatch(Exception):
    """Every micro-batch of a step had a non-finite loss on some rank: nothing was back-propagated."""
SPEAKER_LOOKUP_ROWS = 50_000  # training sets up to this size get speaker names in sample captions (a dict per row)


def speaker_names(dataset, limit: int | None = None) -> dict[str, str | None]:
    """Sample id -> speaker of a dataset's rows, for captions; {} for a dataset longer than `limit`."""
    if limit is not None and len(dataset) > limit:
        return {}
    return {dataset.row_sizes(i).sample_id: speaker for i, speaker in enumerate(dataset.speakers)}


@dataclass
class StepStats:
    """What one optimizer step measured (token-weighted over its micro-batches and ranks)."""

    step: int
    values: dict[str, float]


@dataclass
class TrainResult:
    output_dir: Path
    tensorboard_dir: Path
    checkpoint_dir: Path
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # optimizer step -> train/loss
    grad_norms: dict[int, float] = field(default_factory=dict)
    lrs: dict[int, float] = field(default_factory=dict)
    eval_losses: dict[int, float] = field(default_factory=dict)  # optimizer step -> eval/loss, when evaluated
    stopped_by: str | None = None  # "SIGTERM", "SIGINT" or "wall-time limit" when the run stopped early
    last_eval: dict[str, float] = field(default_factory=dict)  # the last evaluation's eval/* values


def _all_ranks_finite(loss: torch.Tensor, device: torch.device) -> bool:
    """Every rank must take the same branch, or the collectives of backward/step would hang."""
    flag = torch.isfinite(loss.detach()).all().float()
    if dist.is_initialized() and dist.get_world_size() > 1:
        flag = flag.to(device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


class Trainer:
    """Built whole by its constructor; `train_step()` runs one optimizer step, `fit()` runs to `train.max_steps`."""

    def __init__(self, cfg: RunConfig, resume: bool = False) -> None:
        t = cfg.train
        self.rank, self.local_rank, self.world_size = init_distributed()
        self.device = device_for(self.local_rank)
        self.peers = None  # heartbeats: a rank that hangs or is cut off ends the run in bounded time
        if self.world_size > 1 and t.peer_timeout_minutes > 0:
            self.peers = PeerWatch(t.peer_timeout_minutes * 60).start()
        self.ds_config = resolve_deepspeed_config(cfg, self.world_size)
        check_cpu_adam(self.ds_config, t.deepspeed_config)
        if uses_cpu_adam(self.ds_config):
            load_native_op(CPU_ADAM)  # before the model is built: a first build takes minutes, a stale lock forever
        self.out_dir = check_output_dir(t.output_dir)  # after the machine checks: they must leave nothing behind
        seed_everything(t.seed)  # the same on every rank until the model is built: identical initial weights
        self.cfg = cfg = resolve_codec(cfg)
        self.ckpt_dir = self.out_dir / CHECKPOINT_SUBDIR
        self.tb_dir = self.out_dir / "tensorboard"
        check_shared_output_dir(self.out_dir, self.rank, self.world_size, self.device)  # before anything is written
        if self.rank == 0:
            (self.out_dir / "run_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

        self.tokenizer = build_tokenizer(cfg)
        self.data = build_run_data(cfg, self.tokenizer, self.rank)
        self.geometry = self.data.geometry
        model = build_model(cfg, self.tokenizer, self.geometry)
        if self.rank == 0:
            self.tokenizer.save_pretrained(str(self.out_dir / TOKENIZER_SUBDIR))
        if not any(p.requires_grad for p in model.parameters()):
            raise HealthError(HealthCheck.GRAD_NORM, (
                f"[health:grad_norm] every parameter is frozen (model.freeze={cfg.model.freeze!r}, "
                f"whisper.trainable={cfg.whisper.trainable}): nothing can learn, the grad norm would be 0"
            ))  # fmt: skip
        check_align(cfg, self.ds_config)
        w = cfg.whisper
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=optimizer_param_groups(model, cfg),  # per align_role with whisper.align_steps
            config=self.ds_config,
            lr_scheduler=None if "scheduler" in self.ds_config else (
                lambda opt: warmup_cosine(opt, t.lr, t.min_lr, t.warmup_steps, t.max_steps, w.align_steps, w.align_lr)
            ),
        )  # fmt: skip
        seed_everything(rank_seed(t.seed, self.rank))  # from here each rank draws its own dropout and worker seeds

        self.prepare_batch = BatchPreparer(self.device)
        sampler = build_sampler(cfg, self.data.dataset, self.rank, self.world_size)
        self.monitor = HealthMonitor(
            cfg.monitor, self._batch_rules(), self.device,
            None if "scheduler" in self.ds_config else ScheduleReference(
                t.lr, t.min_lr, t.warmup_steps, t.max_steps, w.align_steps, w.align_lr
            ),
        )  # fmt: skip
        self.halts = HaltVote(self.device)  # a rank's own reason to stop, decided by all ranks together
        self.monitor.masters = fp32_masters(self.optimizer)
        self.batches = BatchStream(
            sampler, self._loader, cfg.data.max_bad_fraction, self.monitor.screen, report=self.halts.record
        )
        self.best_eval = BestEval(t.keep_best)
        self.checkpointer = Checkpointer(self.ckpt_dir, t.keep_last, {
            "data": self.batches, "health": self.monitor, "best_eval": self.best_eval,
            "rng": RNGState(self.rank),
        })  # fmt: skip
        if resume:
            path = self.checkpointer.load_latest(self.engine, self.world_size, self.ds_config)
            log.info("resumed from %s at step %d", path, self.step)
        self.lr_scheduled, self.lr_effective = apply_lr_floor(self.optimizer, t.min_lr)

        self.metrics = MetricsProcessor(
            self.tb_dir, self.rank == 0 and t.tensorboard, t.log_every, t.max_steps, self.world_size,
            self.data.codec.frame_rate, t.gradient_clipping, self.engine.module, self.engine.monitor,
            purge_step=self.step + 1 if resume else None,
        )  # fmt: skip
        llm_cfg = self.engine.module.llm.config
        speakers = {}
        if self.metrics.writer is not None and cfg.monitor.decode_every > 0:
            speakers = speaker_names(self.data.dataset, SPEAKER_LOOKUP_ROWS)
            if self.data.eval_dataset is not None:
                speakers.update(speaker_names(self.data.eval_dataset))
        self.samples = SampleLogger(
            self.metrics.writer, self.tokenizer, self.data.codec, self.geometry,
            llm_cfg.audio_token_id, llm_cfg.audio_delay_token_id, speakers,
        )  # fmt: skip
        self.evaluator = None
        if self.data.eval_dataset is not None and t.eval_every > 0:
            # eval rows that fail a batch check are skipped and counted (eval/bad_samples), like rows that fail to load
            collate = functools.partial(collate_screened, self.data.collator, self._batch_rules())
            self.evaluator = Evaluator(
                self.data.eval_dataset, collate, self.prepare_batch, self.geometry.num_codebooks,
                cfg.data.micro_batch_size, cfg.data.max_tokens, self.rank, self.world_size, self.device,
            )  # fmt: skip
        self.last_eval: dict[str, float] = {}  # the latest evaluation's eval/* values
        self.conditioning = None  # swapped-reference scoring at each evaluation (ds_train/evaluation/conditioning.py)
        if self.evaluator is not None and cfg.monitor.conditioning_gain:
            self.conditioning = ConditioningGain(
                self.evaluator, self.data.layout, cfg.whisper.enabled, t.seed, verbose=self.rank == 0
            )
        self.generation: GenerationEvaluator | None = None  # built on first use (rank 0, with an eval set)

    def _batch_rules(self) -> BatchRules:
        m = self.cfg.monitor
        return BatchRules(
            self.geometry, len(self.tokenizer), self.engine.module.audio_in_token_id, self.cfg.whisper.enabled,
            m.silent_rms, m.silent_feature_std,
        )  # fmt: skip

    def _loader(self, sampler):
        return build_loader(self.data.dataset, sampler, self.data.collator, self.cfg.data.num_workers, self.device)

    @property
    def step(self) -> int:
        return self.engine.global_steps

    # -- one optimizer step ------------------------------------------------------------------------------------------
    def train_step(self) -> StepStats:
        started = time.perf_counter()
        parts_due = self._part_norms_due(self.step + 1)
        for attempt in range(STEP_RETRIES + 1):
            micro_batches = self.batches.next_batches(self.engine.gradient_accumulation_steps())
            self.halts.decide()  # every rank has its micro-batches, or all stop here together
            counts = LabelCounts.of_step(micro_batches, self.cfg.model.text_head, self.device)
            weights = LossWeights.for_step(counts, len(micro_batches), self.world_size)
            try:
                sums, first = self.forward_backward(micro_batches, weights)
                break
            except _NoUsableMicroBatch:
                if attempt == STEP_RETRIES:
                    raise HealthError(HealthCheck.NONFINITE_LOSS, (
                        f"[health:nonfinite_loss] step {self.step + 1}: every micro-batch had a non-finite loss, "
                        f"{STEP_RETRIES + 1} times in a row"
                    )) from None  # fmt: skip
        part_norms = part_grad_norms(self.engine.module) if parts_due else None
        self.monitor.snapshot_params(self.engine.module, trained_part_norms(part_norms, self.optimizer, self.cfg))
        self.engine.step()  # the accumulation boundary: the optimizer step
        ds_norm = self.engine.get_global_grad_norm()
        grad_norm = float(ds_norm) if ds_norm is not None else part_norms["total"]
        lr, lr_scheduled = self.lr_effective, self.lr_scheduled
        self.lr_scheduled, self.lr_effective = apply_lr_floor(self.optimizer, self.cfg.train.min_lr)
        step = self.step
        self.monitor.end_step(step, self.engine.module, grad_norm, lr_scheduled, lr)
        measured = StepMeasurement(
            step, sums.all_reduce(self.device), grad_norm, lr, lr_scheduled, time.perf_counter() - started,
            self.batches.take_wait_seconds(), part_norms, self._epoch(),
        )  # fmt: skip
        values = self.metrics.step_values(measured, self._counters())
        decode_every = self.cfg.monitor.decode_every
        if self.rank == 0 and first is not None and decode_every > 0 and (step == 1 or step % decode_every == 0):
            self.samples.log(step, *first)
        return StepStats(step, values)

    def forward_backward(self, micro_batches: list[dict], weights: LossWeights) -> tuple[LossSums, tuple | None]:
        """Forward and backward of one step's collated micro-batches. Each backward but the last also steps the engine
        (DeepSpeed counts micro-steps there); the caller's `engine.step()` after the last is the optimizer step, so
        gradients can be read in between. -> (this rank's sums, the first (batch, output) for sample logging).

        A micro-batch whose loss is not finite on some rank is skipped on every rank, and its place taken by a
        zero-weight pass over the last usable micro-batch, so that DeepSpeed still counts its micro-steps; no data of
        the next step is taken. The used micro-batches keep the planned step's label counts as denominators (they were
        back-propagated before the skip was known): the gradient is the step objective over the used micro-batches
        times the share of the step's labels they hold; their sums, hence train/loss, are that objective's value.
        Raises _NoUsableMicroBatch (before any backward) when every micro-batch is skipped."""
        sums, first = LossSums(self.geometry.num_codebooks), None
        last_used, fillers = None, 0
        for index, cpu_batch in enumerate(micro_batches):
            batch = self.prepare_batch(cpu_batch)
            out = self.engine(**batch, loss_weights=weights)
            self.monitor.observe_batch(batch, out)
            if not _all_ranks_finite(out.loss, self.device):
                self.monitor.observe_nonfinite_loss(batch, float(out.loss))
                fillers += 1
                continue
            if not out.loss.requires_grad:
                raise HealthError(HealthCheck.GRAD_NORM, (
                    f"[health:grad_norm] step {self.step + 1}: the loss depends on no trainable parameter (every "
                    "weight frozen, or the graph detached); nothing can learn. Check model/whisper freezing options."
                ))  # fmt: skip
            self.engine.backward(out.loss)
            sums.add(out, batch)
            first, last_used = first or (batch, out), batch
            if index < len(micro_batches) - 1 or fillers:  # more backward passes follow in this step
                self.engine.step()
        if fillers and last_used is None:
            raise _NoUsableMicroBatch()
        nothing = LossWeights(torch.zeros_like(weights.audio), 0.0)
        for left in range(fillers, 0, -1):
            self.engine.backward(self.engine(**last_used, loss_weights=nothing).loss)
            if left > 1:
                self.engine.step()
        if fillers:
            log.warning("step %d: %d of %d micro-batches skipped for a non-finite loss; the others keep the planned "
                        "label counts as denominators", self.step + 1, fillers, len(micro_batches))  # fmt: skip
        return sums, first

    def _epoch(self) -> float:
        """Epochs of data consumed so far, with the fraction of the current one."""
        sampler = self.batches.sampler
        position = sampler.position(self.batches.fetched)
        return position.epoch + position.offset / max(1, sampler.batches_per_epoch * sampler.world_size)

    def _part_norms_due(self, step: int) -> bool:
        """Per-part norms every monitor.part_norms_every steps and at step 1; every step under ZeRO-0 fp32, where
        DeepSpeed keeps no global norm and the per-part pass yields it."""
        every = self.cfg.monitor.part_norms_every
        periodic = every > 0 and (step == 1 or step % every == 0)
        return periodic or (self.engine.zero_optimization_stage() == 0 and not self.engine.bfloat16_enabled())

    def _counters(self) -> dict[str, float]:
        return {
            **self.monitor.counters(),
            "monitor/bad_rows_skipped": float(len(self.data.dataset.rejects)),
            "monitor/bad_samples_skipped": float(self.batches.bad_samples),
        }

    # -- evaluation --------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """eval/* scalars over the whole eval set (identical on every rank); needs data.eval_*."""
        if self.evaluator is None:
            raise ValueError("no eval set: set data.eval_manifest or data.eval_prepared (and train.eval_every > 0)")
        remember = self.engine.zero_optimization_stage() < 3  # see VoiceCloningModel.remember_whisper
        with self.engine.module.remember_whisper() if remember else contextlib.nullcontext():
            values = self.evaluator.run(self.engine)
            if self.conditioning is not None:
                values.update(self.conditioning.run(self.engine, values))
        return values

    def _evaluate_and_log(self, step: int) -> dict[str, float]:
        verbose = self.rank == 0
        with announced(f"evaluation at step {step} ({len(self.data.eval_dataset)} held-out samples)", verbose):
            values = self.evaluate()
        previous_loss = true_reference_loss(self.last_eval) if self.last_eval else None
        self.last_eval = values
        self.metrics.log_eval(step, values)
        check_reference_ignored(self.monitor, self.cfg.monitor, step, values, previous_loss)
        sample = self.evaluator.first_sample
        if self.rank == 0 and sample is not None and self.cfg.monitor.decode_every > 0:
            self.samples.log(step, *sample, prefix="eval_samples")
        if self.cfg.monitor.generate_seconds > 0 and self.cfg.monitor.generate_samples > 0:
            m = self.cfg.monitor
            with announced(f"generating {min(m.generate_samples, len(self.data.eval_dataset))} held-out samples "
                           f"free-running (up to {m.generate_seconds:g} s each)", verbose):  # fmt: skip
                self._log_generated(step)
        self.evaluator.first_sample = None
        return values

    def _log_generated(self, step: int) -> None:
        """Free-running generation for a fixed subset of the eval set -> cloning/gen_* scalars and, for each of its
        samples, captioned TensorBoard audio and spectrograms under `eval_generated/<k>/`. Rank 0 generates alone,
        except under ZeRO-3, where no rank holds every weight: there every rank generates the same batch in step (each
        forward gathers the partitioned weights from all ranks; transformers' `synced_gpus` keeps a rank that
        finishes first taking part), and rank 0 measures and logs."""
        zero3 = self.engine.zero_optimization_stage() >= 3
        if self.rank != 0 and not zero3:
            return
        if self.generation is None:
            self.generation = self._build_generation()
        values = self.generation.run(self.engine.module, zero3 and self.world_size > 1, measure=self.rank == 0)
        if self.rank != 0:
            return
        self.metrics.log_scalars(step, values)
        self.last_eval.update(values)
        if values:
            shown = " | ".join(f"{k.removeprefix('cloning/gen_')} {v:.3g}" for k, v in values.items())
            log.info("eval generation %5d | %s", step, shown)
        speaker = self.generation.speaker
        if "cloning/gen_speaker_sim" in values:
            log.info("eval generation %5d | speaker similarity %.3f to the reference (the real target's: %.3f) by %s",
                     step, values["cloning/gen_speaker_sim"], values["cloning/gen_speaker_sim_target"],
                     speaker.name)  # fmt: skip
        if self.cfg.monitor.decode_every > 0:
            self.samples.log_generated(step, self.generation.generated, speaker.name if speaker else None)

    def _build_generation(self) -> GenerationEvaluator:
        m, llm_cfg = self.cfg.monitor, self.engine.module.llm.config
        measures = self.rank == 0  # the other ranks only take part in generation (ZeRO-3)
        speaker = speaker_encoder(m.speaker_model, self.device) if measures else None
        if speaker is not None:
            log.info("speaker similarity (cloning/gen_speaker_sim) by %s", speaker.name)
        asr = Transcriber(m.asr_model, self.device) if m.asr_model and measures else None
        return GenerationEvaluator(
            self.data.eval_dataset, self.data.collator, self.data.codec, self.geometry, m.generate_samples,
            self.samples.special.audio_out_bos, (llm_cfg.audio_token_id, llm_cfg.audio_delay_token_id), speaker,
            max_frames=frame_budget(m.generate_seconds, self.data.codec.frame_rate, self.geometry), asr=asr,
        )  # fmt: skip

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def save(self, best: bool = False) -> str:
        """Checkpoint this step (all ranks); `best` also points the checkpoints folder's `best` file at it."""
        meta = {
            "step": self.step,
            "world_size": self.world_size,
            "zero_stage": self.engine.zero_optimization_stage(),
            "bf16": self.engine.bfloat16_enabled(),
            "num_codebooks": self.geometry.num_codebooks,
            "codec_codebook_size": self.geometry.codec_codebook_size,
        }
        with announced(f"saving checkpoint global_step{self.step}", self.rank == 0):
            tag = self.checkpointer.save(self.engine, self.cfg, meta, best)
        if self.cfg.train.debug_kill_after_step == self.step and self.rank == 0:
            log.warning("train.debug_kill_after_step=%d: killing rank 0 with SIGKILL", self.step)
            os.kill(os.getpid(), signal.SIGKILL)
        return tag

    # -- the loop ----------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        t = self.cfg.train
        result = TrainResult(self.out_dir, self.tb_dir, self.ckpt_dir, self.step)
        self._log_start()
        stopper = GracefulStop(t.max_wall_minutes)
        try:
            while self.step < t.max_steps:
                stats = self.train_step()
                step, values = stats.step, stats.values
                result.losses[step], result.grad_norms[step] = values["train/loss"], values["train/grad_norm"]
                result.lrs[step] = values["train/lr"]
                self.metrics.log(step, values)
                best = False
                if self.evaluator is not None and (step % t.eval_every == 0 or step == t.max_steps):
                    result.eval_losses[step] = self._evaluate_and_log(step)["eval/loss"]
                    best = self.best_eval.improves(result.eval_losses[step])
                reason = stopper.agreed_reason(self.device)
                if step % t.save_every == 0 or step == t.max_steps or reason or best:
                    self.save(best=best)
                if reason:
                    log.warning("stopping at step %d (%s) after saving a checkpoint", step, reason)
                    result.stopped_by = reason
                    break
        except RuntimeError as err:
            lost = self.peers.lost() if self.peers is not None and is_transport_error(err) else []
            if lost:
                first = str(err).strip().splitlines()[0][:200]
                raise PeerLost(f"lost {self.peers.describe(lost)} at step {self.step + 1} ({first}); the run "
                               "stopped: restart it with --resume") from err  # fmt: skip
            raise
        finally:
            if self.peers is not None:
                self.peers.stop()
            self.batches.close()  # DataLoader workers end before the rank exits (see BatchStream.close)
            stopper.restore()
            self.metrics.close()
        result.final_step = self.step
        result.last_eval = dict(self.last_eval)
        return result

    def _log_start(self) -> None:
        if self.rank == 0 and self.step == 0:  # the run card at step 0 (a resumed run keeps the first one)
            d = self.cfg.data
            self.metrics.log_run_card(self.cfg, {
                "output_dir": self.out_dir, "tensorboard": self.tb_dir, "checkpoints": self.ckpt_dir,
                "manifest": d.manifest, "prepared": d.prepared, "eval_manifest": d.eval_manifest,
                "eval_prepared": d.eval_prepared, "codec_path": d.codec_path, "model.path": self.cfg.model.path,
                "whisper.path": self.cfg.whisper.path if self.cfg.whisper.enabled else None,
            }, str(self.device))  # fmt: skip
        if self.rank == 0:
            log.info(
                "training %d examples (%d rejected) on %d rank(s), device %s, ZeRO-%d, %s, step %d -> %d",
                len(self.data.dataset), len(self.data.dataset.rejects), self.world_size, self.device,
                self.engine.zero_optimization_stage(), "bf16" if self.engine.bfloat16_enabled() else "fp32",
                self.step, self.cfg.train.max_steps,
            )  # fmt: skip


def has_checkpoint(cfg: RunConfig) -> bool:
    return latest_tag(Path(cfg.train.output_dir).resolve() / CHECKPOINT_SUBDIR) is not None


def train(cfg: RunConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) the training the config describes; returns where logs and checkpoints are."""
    return Trainer(cfg, resume).fit()
