"""A training run on disk: its config, its latest checkpoint, and everything to reload it offline.

RUN_DIR layout (format 1):

    run.json        RunConfig as JSON (model source, bits, objective, head, LoRA, front-end
                    parameters, tokenizer settings, seed, optimiser settings)
    base/           the base ClapModel *before* LoRA (save_pretrained: config.json +
                    model.safetensors). Always written, also for hub models, so a run loads
                    with no network and no hub cache; costs the model's size on disk.
    tokenizer/      tokenizer.save_pretrained (tokenizer.json included)
    checkpoint.pt   {"model": trained weights only (heads, LoRA adapters; the whole ClapModel
                    for the ``clip`` objective), "train": optimiser/scheduler/RNG/step state}
    hf_model/       ``clip`` runs only: the trained ClapModel + tokenizer, loadable as
                    ``--model RUN_DIR`` or ``--model RUN_DIR/hf_model`` like a hub checkpoint.

Checkpoints are written to a temporary file and renamed, so a crash never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, ClapModel

from .losses import PRETRAIN_OBJECTIVES
from .model import HashingModel, ModelLoadError

RUN_FORMAT = 1


@dataclass
class RunConfig:
    """Everything that defines a run; written to RUN_DIR/run.json."""

    model: str = "tiny"                 # hub id, local dir, or "tiny" (random tiny CLAP)
    tiny_config: dict = field(default_factory=dict)  # "tiny" only: tiny_clap_config overrides
    bits: int = 64
    objective: str = "crovca"           # crovca|contrastive|distill|clip|supclip|lsh|itq
    head: str = "crovca"                # crovca | seed
    head_hidden: int | None = None
    lora_rank: int = 8                  # 0 = no LoRA (heads only)
    lora_alpha: int | None = None       # default 2 * rank
    lora_targets: tuple[str, ...] = ("query", "value")
    frontend: dict = field(default_factory=dict)
    text_max_length: int = 77
    text_padding: str = "max_length"
    seed: int = 0
    epochs: int = 5
    warmup_epochs: int = 1              # head-only epochs before LoRA trains
    batch_size: int = 32
    lr_head: float = 1e-3
    lr_lora: float = 1e-4
    lr_base: float = 5e-4               # clip objective: the whole ClapModel trains
    weight_decay: float = 1e-4
    loss: dict = field(default_factory=dict)  # objective keyword arguments (weights...)
    amp: bool = True                    # autocast on CUDA only
    format: int = RUN_FORMAT

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "run.json") -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelLoadError(f"{where}: unknown keys {unknown}; written by a newer cvahash?")
        if d.get("format", RUN_FORMAT) != RUN_FORMAT:
            raise ModelLoadError(f"{where}: run format {d.get('format')} is not {RUN_FORMAT}")
        d = dict(d)
        if "lora_targets" in d:
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)


def trained_state(model: HashingModel, objective: str) -> dict[str, torch.Tensor]:
    """The weights a run trains: heads (with BN buffers) and LoRA; all of CLAP for ``clip``."""
    keep = {}
    for name, tensor in model.state_dict().items():
        if (name.startswith(("text_head.", "audio_head.")) or "lora_" in name
                or (objective in PRETRAIN_OBJECTIVES and name.startswith("clap."))):
            keep[name] = tensor.detach().cpu().clone()
    return keep


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_run(run_dir: str | Path, model: HashingModel, config: RunConfig, tokenizer,
             train_state: dict | None = None, *, base=None) -> Path:
    """Write run.json, tokenizer/, base/ (once) and checkpoint.pt.

    ``base`` is the ClapModel before LoRA; needed the first time only when ``model`` already
    carries LoRA (otherwise ``model.base`` is saved).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    if not (run_dir / "tokenizer" / "tokenizer.json").exists():
        # Calls with padding=/truncation= leave that state in the fast tokenizer; the saved
        # tokenizer.json should not carry it (run.json holds the settings; docs/architecture.md).
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_padding()
            backend.no_truncation()
        tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    if not (run_dir / "base" / "config.json").exists():
        if base is None:
            if model.lora_rank:
                raise ValueError("save_run: pass base= (the ClapModel before LoRA) on first save")
            base = model.base
        base.save_pretrained(str(run_dir / "base"))
    ckpt = {"format": RUN_FORMAT, "model": trained_state(model, config.objective)}
    if train_state is not None:
        ckpt["train"] = train_state
    _atomic_torch_save(ckpt, run_dir / "checkpoint.pt")
    return run_dir


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise ModelLoadError(f"{run_dir} is not a run directory: {path} is missing "
                             "(make one with `cvahash train ... --out RUN_DIR`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc
    return RunConfig.from_dict(data, str(path))


def build_model(config: RunConfig, base) -> HashingModel:
    """A HashingModel of ``config``'s shape around ``base`` (LoRA added when rank > 0)."""
    model = HashingModel(base, config.bits, head=config.head, hidden=config.head_hidden)
    if config.lora_rank and config.objective not in PRETRAIN_OBJECTIVES:
        model.add_lora(config.lora_rank, config.lora_alpha, targets=config.lora_targets)
    return model


def load_checkpoint(run_dir: str | Path, map_location="cpu") -> dict:
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        raise ModelLoadError(f"{path} is missing: the run has not saved a checkpoint yet")
    return torch.load(path, map_location=map_location, weights_only=False)


def load_run(run_dir: str | Path, map_location="cpu"):
    """Load a run offline -> (HashingModel in eval mode, RunConfig, tokenizer)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    try:
        base = ClapModel.from_pretrained(str(run_dir / "base"), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"),
                                                  local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{run_dir}: base/ or tokenizer/ unreadable ({exc})") from exc
    model = build_model(config, base)
    ckpt = load_checkpoint(run_dir, map_location)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    expected = trained_state(model, config.objective).keys()
    not_loaded = sorted(set(expected) & set(missing))
    if unexpected or not_loaded:
        raise ModelLoadError(f"{run_dir}/checkpoint.pt does not match run.json: "
                             f"unexpected {unexpected[:3]}, missing {not_loaded[:3]}")
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    return model.eval(), config, tokenizer
