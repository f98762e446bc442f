"""Typed, validated configuration: model shapes, training settings and named presets.

Everything a run needs is in `RunConfig` (a `ModelConfig` plus a `TrainConfig`); it is saved
as `config.json` in the checkpoint directory, and a run is reproducible from that file.
The CLI builds its flags from these dataclasses, so a new field is a new flag for free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import tomllib
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, arg

# Upper bounds that stop a hostile or mistaken config from allocating absurd memory
# before anything is built (a 124M GPT-2 is far inside them).
MAX_VOCAB = 1_000_000
MAX_D_MODEL = 16_384
MAX_LAYERS = 256
MAX_BLOCK = 1_048_576
MAX_PARAMS = 20_000_000_000
MAX_NEW_TOKENS = 1 << 20  # tokens one sample may ask for
MAX_TEMPERATURE = 100.0  # past this every token is about equally likely
IGNORE_INDEX = -100  # a target with this value (padding, a prompt) is left out of the loss


# the allowed values of the settings that have a fixed list; a field annotated with one of
# these is checked against it and gets `--flag {a,b,...}` (see `choices`)
Activation = Literal["gelu", "gelu_tanh"]
Tokenizer = Literal["char", "word", "bpe"]
Batching = Literal["stream", "documents"]
Dtype = Literal["auto", "float32", "bfloat16"]
Compile = Literal["off", "on", "auto"]
Quantize = Literal["none", "int8"]  # sampling weights (`minigpt sample --quantize`)
Speculate = Literal["none", "ngram"]  # drafting tokens (`minigpt sample --speculate`)
# rope's context-extension methods (positional.rope_frequencies has the formulas and papers)
RopeScaling = Literal["none", "linear", "ntk", "dynamic", "yarn", "llama3"]


def setting(default: Any, help: str, *, metavar: str | None = None,
            default_text: str | None = None) -> Any:
    """A config field with its help text: with its annotation, the one source for `--help`,
    choices and defaults.

    `help` says what the setting does (with its unit); `default_text` replaces the shown
    default where the stored one is a placeholder (`d_ff` 0 means 4 x d_model).
    """
    meta = {"help": help, "metavar": metavar, "default_text": default_text}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """Shapes of the GPT. `vocab_size` is filled in from the tokenizer when left at 0."""

    vocab_size: int = setting(0, "vocabulary size; 0 takes it from the tokenizer")
    block_size: int = setting(64, "context length L the model is trained at, in tokens")
    n_layer: int = setting(4, "number of transformer blocks")
    n_head: int = setting(4, "attention heads per block; must divide d_model")
    d_model: int = setting(128, "embedding width (channels per token)")
    d_ff: int = setting(0, "feed-forward width", default_text="4 x d_model")
    dropout: float = setting(0.0, "dropout probability in attention and MLP", metavar="P")
    # any registered encoding (an open set: plug-ins add to it), so a str, not a Literal
    pos: str = setting("learned", "positional encoding", metavar="NAME")
    bias: bool = setting(True, "biases in linear layers and LayerNorms, as GPT-2")
    layer_norm_eps: float = setting(1e-5, "LayerNorm epsilon (GPT-2's value)")
    activation: Activation = setting("gelu", "MLP activation: exact (erf) GELU, as nanoGPT, "
                                     "or gelu_tanh, GPT-2's 'gelu_new'")
    rope_base: float = setting(10000.0, "rope only: rotation base (larger = slower rotation)")
    rope_scaling: RopeScaling = setting(
        "none", "rope only: context extension: linear (position interpolation, Chen et al.), "
        "ntk (NTK-aware base, bloc97), dynamic (NTK from the sequence length), yarn (Peng et "
        "al.) or llama3; none is plain RoPE")
    rope_factor: float = setting(1.0, "rope only: context-extension factor s (the length it "
                                 "aims at / rope_original_length); 1 with rope_scaling none")
    rope_original_length: int = setting(0, "rope only: the length L the rope was first trained "
                                        "at, which the extension methods scale from, in tokens",
                                        default_text="block_size")
    t5_num_buckets: int = setting(32, "t5 only: number of relative-distance buckets")
    t5_max_distance: int = setting(0, "t5 only: distance where the last bucket starts, in "
                                   "tokens; every bucket used past it shares one value",
                                   default_text="block_size, so every bucket is trained")
    sinusoidal_ratio: float = setting(0.7, "sinusoidal only: position-signal rms / token-"
                                      "embedding rms at init (Vaswani et al. ~0.7); the scale "
                                      "is learned")
    fire_mlp_width: int = setting(32, "fire only: hidden width of the MLP that maps the "
                                  "normalised distance to one bias per head")
    random_positions: int = setting(0, "randomized positions (Ruoss et al. 2023): 0 off, or N: "
                                    "a length-n sequence gets a sorted random sample of n "
                                    "positions from [0, N) instead of 0..n-1; N >= block_size",
                                    metavar="N")

    def __post_init__(self) -> None:
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model
        if self.t5_max_distance == 0 and isinstance(self.block_size, int):
            self.t5_max_distance = max(self.block_size, self.t5_num_buckets // 2 + 1) \
                if isinstance(self.t5_num_buckets, int) else self.block_size
        if self.rope_original_length == 0 and isinstance(self.block_size, int):
            self.rope_original_length = self.block_size
        _check_int(self, "vocab_size", 0, MAX_VOCAB)
        _check_int(self, "block_size", 1, MAX_BLOCK)
        _check_int(self, "n_layer", 1, MAX_LAYERS)
        _check_int(self, "n_head", 1, MAX_D_MODEL)
        _check_int(self, "d_model", 1, MAX_D_MODEL)
        _check_int(self, "d_ff", 1, 8 * MAX_D_MODEL)
        _check_int(self, "t5_num_buckets", 2, 4096)
        _check_int(self, "t5_max_distance", 2, MAX_BLOCK)
        _check_int(self, "rope_original_length", 1, MAX_BLOCK)
        _check_int(self, "fire_mlp_width", 1, MAX_D_MODEL)
        _check_int(self, "random_positions", 0, MAX_BLOCK)
        _check_float(self, "dropout", 0.0, 1.0, hi_open=True)
        _check_float(self, "layer_norm_eps", 0.0, 1.0, lo_open=True)
        _check_float(self, "rope_base", 1.0, 1e12, lo_open=True)
        _check_float(self, "rope_factor", 0.0, 1e6, lo_open=True)
        _check_choice(self, "rope_scaling")
        _check_float(self, "sinusoidal_ratio", 0.0, 1e6, lo_open=True)
        if self.d_model % self.n_head:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})."
            )
        from .positional import REGISTRY  # late import: positional needs this module

        if self.pos not in REGISTRY:
            raise ConfigError(
                f"pos: unknown positional encoding {self.pos!r}; choose one of "
                f"{', '.join(REGISTRY)}."
            )
        enc = REGISTRY[self.pos]
        if (self.rope_scaling != "none" or self.rope_factor != 1.0) \
                and "rope_scaling" not in enc.extension_settings:
            raise ConfigError(f"{arg('rope_scaling')} and {arg('rope_factor')} extend a rope "
                              f"model's context; pos {self.pos!r} has no such methods, so "
                              "leave them at none and 1 or use pos 'rope'.")
        enc.check_config(self)  # what the encoding itself needs
        if self.random_positions and not REGISTRY[self.pos].reads_positions:
            raise ConfigError(f"random_positions applies only to encodings that read positions "
                              f"and {self.pos} reads none; set random_positions to 0.")
        if 0 < self.random_positions < self.block_size:
            raise ConfigError(f"random_positions ({self.random_positions}) must be 0 (off) or at "
                              f"least block_size ({self.block_size}).")
        _check_choice(self, "activation")
        if self.t5_max_distance <= self.t5_num_buckets // 2:
            raise ConfigError("t5_max_distance must be larger than t5_num_buckets / 2.")
        if self.approx_params() > MAX_PARAMS:
            raise ConfigError(
                f"these shapes make about {self.approx_params():.3g} parameters, over the "
                f"limit of {MAX_PARAMS:.0e}; use smaller n_layer, d_model or vocab_size."
            )

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_head

    def approx_params(self) -> int:
        c = self.d_model
        per_layer = 4 * c * c + 2 * c * self.d_ff
        return self.vocab_size * c + self.block_size * c + self.n_layer * per_layer


@dataclass
class TrainConfig:
    """Data, optimisation, evaluation and output settings of one training run."""

    data: str = setting("shakespeare", "'shakespeare' (the embedded plays) or a UTF-8 .txt "
                        "file or directory of them", metavar="PATH")
    tokenizer: Tokenizer = setting("char", "char (one token per character), word or bpe "
                                   "(byte-level BPE trained on the data)")
    vocab_size_bpe: int = setting(512, "bpe tokenizer: target vocabulary size, in tokens")
    min_freq: int = setting(1, "word tokenizer only: drop words seen fewer times")
    max_vocab: int = setting(20_000, "word tokenizer: keep at most this many words")
    batching: Batching = setting("stream", "stream (random windows of the text) or documents "
                                 "(one padded speech per row)")
    batch_size: int = setting(12, "sequences per micro-batch (per process)")
    grad_accum: int = setting(1, "micro-batches accumulated per optimizer step")
    max_steps: int = setting(2000, "optimizer steps to train for")
    lr: float = setting(1e-3, "peak learning rate, reached after warm-up", metavar="FLOAT")
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine decay",
                            metavar="FLOAT")
    warmup_steps: int = setting(100, "steps of linear learning-rate warm-up")
    lr_decay_steps: int = setting(0, "step where the cosine decay reaches min_lr (then stays "
                                  "there); 0: max_steps. A resume that changes max_steps keeps "
                                  "the run's schedule by fixing it")
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices", metavar="FLOAT")
    beta1: float = setting(0.9, "AdamW beta1", metavar="FLOAT")
    beta2: float = setting(0.99, "AdamW beta2", metavar="FLOAT")
    grad_clip: float = setting(1.0, "clip the gradient norm to this; 0 disables clipping",
                               metavar="FLOAT")
    eval_interval: int = setting(250, "evaluate and checkpoint every N steps")
    eval_iters: int = setting(20, "batches per loss estimate at each evaluation")
    log_interval: int = setting(10, "log the training loss every N steps")
    seed: int = setting(1337, "random seed for weights, batches and dropout")
    device: str = setting("auto", "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps",
                          metavar="DEVICE")
    dtype: Dtype = setting("auto", "auto (bf16 autocast on CUDA GPUs with bf16 and on CPUs "
                           "with native bf16 instructions (AVX512-BF16/AMX), else float32), "
                           "float32 or bfloat16")
    compile: Compile = setting("auto", "torch.compile the model; auto: only on CUDA for runs "
                               "of 1000+ steps")
    sample_temperatures: list[float] = setting([0.5, 0.8, 1.0], "temperatures of the samples "
                                               "printed after training", metavar="T,T,...")
    sample_tokens: int = setting(200, "tokens per sample after training; 0 for none")
    sample_prompt: str = setting("", "prompt of the samples after training", metavar="TEXT")

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError("data must be 'shakespeare' or a path to a .txt file or directory.")
        for name in ("tokenizer", "batching", "dtype", "compile"):
            _check_choice(self, name)
        _check_int(self, "vocab_size_bpe", 260, MAX_VOCAB)
        _check_int(self, "min_freq", 1, 1 << 40)
        _check_int(self, "max_vocab", 8, MAX_VOCAB)
        _check_int(self, "batch_size", 1, 1 << 20)
        _check_int(self, "grad_accum", 1, 1 << 20)
        _check_int(self, "max_steps", 1, 1 << 40)
        _check_int(self, "warmup_steps", 0, 1 << 40)
        _check_int(self, "lr_decay_steps", 0, 1 << 40)
        _check_int(self, "eval_interval", 1, 1 << 40)
        _check_int(self, "eval_iters", 1, 1 << 20)
        _check_int(self, "log_interval", 1, 1 << 40)
        _check_int(self, "seed", 0, 2**63 - 1)
        _check_int(self, "sample_tokens", 0, MAX_NEW_TOKENS)
        _check_float(self, "lr", 0.0, 10.0, lo_open=True)
        _check_float(self, "min_lr", 0.0, 10.0)
        _check_float(self, "weight_decay", 0.0, 10.0)
        _check_float(self, "beta1", 0.0, 1.0, hi_open=True)
        _check_float(self, "beta2", 0.0, 1.0, hi_open=True)
        _check_float(self, "grad_clip", 0.0, 1e9)
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr}).")
        if not isinstance(self.sample_temperatures, list) or not all(
            _is_number(t) and 0 <= t <= MAX_TEMPERATURE for t in self.sample_temperatures
        ):
            raise ConfigError(f"sample_temperatures must be a list of numbers from 0 to "
                              f"{MAX_TEMPERATURE:g}.")
        self.sample_temperatures = [float(t) for t in self.sample_temperatures]
        dev = self.device
        if not isinstance(dev, str) or not (
            dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, not {dev!r}.")


    def sampling(self, temperature: float) -> SamplingSettings:
        """The settings of one sample printed after training (and of the study's samples):
        `sample_tokens` new tokens at `temperature`, seeded with the run's seed, in float32
        (not the weights `auto` measures fastest), so a run's samples are the same on every
        machine."""
        return SamplingSettings(max_new_tokens=self.sample_tokens, temperature=temperature,
                                seed=self.seed, dtype="float32")


@dataclass
class SamplingSettings:
    """How tokens are drawn (Hugging Face's knob names) and the weights they are computed
    with: the one declaration of every sampling setting. `minigpt sample`'s flags,
    `minigpt serve`'s request fields, the keywords of `generate()`, `sample_text()` and
    `stream_text()`, and their checks all come from these fields, so a new knob is one field
    here (and its use in `generation.Decoding`)."""

    max_new_tokens: int = setting(200, "tokens to generate per sample", metavar="N")
    temperature: float = setting(0.8, "divide the logits by this; 0 means greedy",
                                 metavar="FLOAT")
    top_k: int = setting(0, "keep only the N most likely tokens; 0 keeps all", metavar="N")
    top_p: float = setting(1.0, "nucleus sampling: keep the most likely tokens up to this "
                           "probability mass; 1 keeps all", metavar="FLOAT")
    seed: int = setting(0, "random seed; the same seed gives the same text", metavar="N")
    dtype: Dtype = setting("auto", "weights for sampling: auto (the format, int8 included, "
                           "whose matrix products measure fastest here; measured once, "
                           "cached), float32 (exact) or bfloat16")
    quantize: Quantize = setting("none", "int8: weight-only int8 linear layers with one scale "
                                 "per output channel (about half the bytes of bf16 per token)")
    speculate: Speculate = setting("none", "ngram: draft tokens by prompt lookup and check "
                                   "them in one pass (the same greedy text in fewer passes; "
                                   "one sequence, with the cache)")

    def __post_init__(self) -> None:
        _check_int(self, "max_new_tokens", 0, MAX_NEW_TOKENS)
        t = self.temperature
        if not _is_number(t) or not 0 <= t <= MAX_TEMPERATURE:
            raise ConfigError(f"{arg('temperature')} must be 0 (greedy) or positive, at most "
                              f"{MAX_TEMPERATURE:g}, got {t}.")
        self.temperature = float(t)
        _check_int(self, "top_k", 0, MAX_VOCAB)
        _check_float(self, "top_p", 0, 1, lo_open=True)
        _check_int(self, "seed", 0, 2**63 - 1)
        _check_choice(self, "dtype")
        _check_choice(self, "quantize")
        _check_choice(self, "speculate")


# sampling settings that choose the weights: one choice per loaded model (a server's flags),
# not per request
WEIGHT_SETTINGS = ("dtype", "quantize")
SAMPLE_ONLY_SETTINGS = ("speculate",)  # one sequence at a time: `sample`'s, not a server's


def sampling_settings(given: dict[str, Any] | None = None,
                      base: SamplingSettings | None = None) -> SamplingSettings:
    """`base` (default: the defaults) with the settings in `given` applied and checked; a
    value of None means not given. Names outside SamplingSettings are refused by name."""
    types_ = field_types(SamplingSettings)
    given = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(given) - set(types_))
    if unknown:
        raise ConfigError(f"unknown sampling setting(s) {', '.join(unknown)}; the settings are "
                          f"{', '.join(types_)}.")
    values = {k: _coerce("SamplingSettings", k, types_[k], v) for k, v in given.items()}
    return dataclasses.replace(base or SamplingSettings(), **values)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, raw: Any, *, where: str = "config") -> "RunConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table/object with 'model' and 'train' sections.")
        unknown = set(raw) - {"model", "train", "preset"}
        if unknown:
            raise ConfigError(
                f"{where} has unknown section(s) {', '.join(sorted(unknown))}; "
                "expected 'model', 'train' and optionally 'preset'."
            )
        base = preset(raw["preset"]) if "preset" in raw else RunConfig()
        with file_names(where):
            return merge(base, raw.get("model", {}), raw.get("train", {}), where=where)


@contextlib.contextmanager
def file_names(where: str) -> Iterator[None]:
    """Errors about settings read from a file name them as the file does (`n_layer`), not as
    command-line flags, and say which file."""
    try:
        yield
    except ConfigError as e:
        text = str(e)
        raise ConfigError(text if text.startswith(f"{where}:") else f"{where}: {text}") from None


# --- presets ---------------------------------------------------------------------------

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # seconds on a CPU: for tests and smoke runs
    "tiny": {
        "model": dict(block_size=32, n_layer=2, n_head=2, d_model=32),
        "train": dict(batch_size=8, max_steps=50, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                      eval_interval=25, eval_iters=2, log_interval=5, sample_tokens=40),
    },
    # nanoGPT's CPU recipe for shakespeare_char
    "small": {
        "model": dict(block_size=64, n_layer=4, n_head=4, d_model=128),
        "train": dict(batch_size=12, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                      eval_interval=250, eval_iters=20),
    },
    # nanoGPT's GPU recipe for shakespeare_char
    "shakespeare-char": {
        "model": dict(block_size=256, n_layer=6, n_head=6, d_model=384, dropout=0.2),
        "train": dict(batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                      eval_interval=250, eval_iters=200, beta2=0.99),
    },
    # GPT-2 small (124M) shapes
    "gpt2": {
        "model": dict(block_size=1024, n_layer=12, n_head=12, d_model=768, dropout=0.0),
        "train": dict(tokenizer="bpe", vocab_size_bpe=50257, batch_size=12, grad_accum=40,
                      max_steps=600000, lr=6e-4, min_lr=6e-5, warmup_steps=2000,
                      eval_interval=1000, eval_iters=200, beta2=0.95),
    },
}

# Study presets: a base model preset plus overrides, and the study's own settings; `task`
# overrides apply on top when the study is an algorithmic task instead of language modelling.
# `quick` is what `make demo` runs: chosen by measurement to finish in a few minutes on a
# 2-core CPU while still separating the encodings; `full` is the rigorous version.
STUDY_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "base": "small",
        "model": {"block_size": 64, "n_layer": 4, "n_head": 4, "d_model": 128, "dropout": 0.0},
        "train": {"tokenizer": "char", "batch_size": 16, "max_steps": 800, "lr": 2e-3,
                  "min_lr": 2e-4, "warmup_steps": 60, "eval_interval": 100, "eval_iters": 8,
                  "log_interval": 10, "sample_tokens": 300},
        "task": {"batch_size": 32, "max_steps": 3000, "batching": "documents",
                 "sample_tokens": 0, "eval_interval": 250},
        "seeds": 1,
        "lengths": "1x,2x,4x,8x",
        "eval_tokens": 8192,  # scored targets at every length (256 windows of stride 32)
        "task_instances": 200,
        "finetune_steps": 100,  # compare --extend: fine-tune steps at s x L
    },
    "full": {
        "base": "small",
        "model": {"block_size": 128, "n_layer": 6, "n_head": 8, "d_model": 256, "dropout": 0.1},
        "train": {"tokenizer": "char", "batch_size": 32, "max_steps": 4000, "lr": 1e-3,
                  "min_lr": 1e-4, "warmup_steps": 200, "eval_interval": 250, "eval_iters": 40,
                  "log_interval": 20, "sample_tokens": 500},
        "task": {"batching": "documents", "sample_tokens": 0},
        "seeds": 3,
        "lengths": "1x,2x,4x,8x",
        "eval_tokens": 32768,
        "task_instances": 500,
        "finetune_steps": 400,
    },
}


# model settings `minigpt viz` takes for an untrained encoding, and the context-extension
# ones that `sample`, `export` and `viz` also apply to a checkpoint (zero-shot)
VIZ_SETTINGS = ("block_size", "n_head", "d_model", "rope_base")
EXTENSION_SETTINGS = ("rope_scaling", "rope_factor")

# the weights a command that reads a checkpoint can load: the latest, or the best evaluated
WHICH = ("last", "best")

# the vocabulary setting behind --vocab-size, per tokenizer (char has none)
VOCAB_FIELDS = {"bpe": "vocab_size_bpe", "word": "max_vocab"}


def vocab_field(tokenizer: str) -> str:
    """The train setting that one vocabulary-size value means for this tokenizer."""
    if tokenizer not in VOCAB_FIELDS:
        raise ConfigError(f"the {tokenizer} tokenizer has one token per character of the data, "
                          f"so it takes no vocabulary size; drop {arg('vocab_size_bpe')}, or "
                          f"choose the bpe or word tokenizer with {arg('tokenizer')}.")
    return VOCAB_FIELDS[tokenizer]


def preset_names() -> str:
    """Both preset families, for messages: model presets and study presets."""
    return (f"model presets {', '.join(PRESETS)}; study presets (one run of minigpt compare) "
            f"{', '.join(STUDY_PRESETS)}")


def preset(name: str) -> RunConfig:
    """A named configuration: a model preset (tiny, small, ...) or the per-run settings of a
    study preset of `minigpt compare` (quick, full; positional encoding learned)."""
    if isinstance(name, str) and name in PRESETS:
        p = PRESETS[name]
        return merge(RunConfig(), p["model"], p["train"], where=f"preset {name}")
    if isinstance(name, str) and name in STUDY_PRESETS:
        sp = STUDY_PRESETS[name]
        return merge(preset(sp["base"]), sp["model"], sp["train"], where=f"study preset {name}")
    raise ConfigError(f"unknown preset {name!r}; choose one of the {preset_names()}.")


def preset_value(name: str, section: str, key: str) -> Any:
    """A preset's value for one setting, read without building (and validating) the config."""
    if name in STUDY_PRESETS:
        sp = STUDY_PRESETS[name]
        if key in sp[section]:
            return sp[section][key]
        name = sp["base"]
    if key in PRESETS[name][section]:
        return PRESETS[name][section][key]
    cls = ModelConfig if section == "model" else TrainConfig
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


# --- merging and parsing ----------------------------------------------------------------

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _coerce(cls_name: str, name: str, typ: Any, value: Any) -> Any:
    """Check (and gently convert) one value against its annotated type."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if _is_number(value):
            return float(value)
    elif typ is str or origin is Literal:  # a Literal's values are checked by __post_init__
        if isinstance(value, str):
            return value
    elif origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, list):
            return [_coerce(cls_name, name, inner, v) for v in value]
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(typ):
            try:
                return _coerce(cls_name, name, option, value)
            except ConfigError:
                pass
    if typ in (int, float) and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")
    shown = repr(value)  # a value from a request or a file may be long: show its start
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise ConfigError(f"{name} must be {_kind(typ)}, got {shown}.")


def _kind(typ: Any) -> str:
    """What a value of an annotated type is, in words: `a whole number`, `text`."""
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    origin = typing.get_origin(typ)
    if origin is Literal:
        return "text"
    if origin is list:
        return f"a list of {_kind(typing.get_args(typ)[0]).removeprefix('a ')}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(t) for t in typing.get_args(typ) if t is not type(None))
    return words.get(typ, f"of type {getattr(typ, '__name__', typ)}")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """A config dataclass's fields and their resolved annotations (computed once per class:
    every config built checks its choices against them; do not change the dict)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def merge(base: RunConfig, model: dict[str, Any] | None = None,
          train: dict[str, Any] | None = None, *, where: str = "config") -> RunConfig:
    """Return `base` with overrides applied, validated; `base` itself is not changed.

    `model` holds ModelConfig settings (shapes, `pos`), `train` TrainConfig settings (data,
    optimisation, steps), e.g. `merge(preset("small"), {"pos": "rope"}, {"max_steps": 500})`
    or `merge(preset("small"), train={"max_steps": 500})`. A setting given in the wrong
    section is refused with the name of the right one. `where` names the source in errors.
    """
    out = []
    for section, cls, current in (("model", ModelConfig, base.model),
                                  ("train", TrainConfig, base.train)):
        overrides = (model if section == "model" else train) or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: section '{section}' must be a table of settings.")
        types_ = field_types(cls)
        unknown = [k for k in overrides if k not in types_]
        other = "train" if section == "model" else "model"
        misplaced = [k for k in unknown if k in field_types(type(getattr(base, other)))]
        if misplaced:
            raise ConfigError(
                f"{where}: {', '.join(sorted(misplaced))} is a {other} setting, not a {section} "
                f"one; give it in the {other} section ({other}={{...}} in merge()).")
        if unknown:
            raise ConfigError(
                f"{where}: unknown {section} setting(s) {', '.join(sorted(unknown))}."
            )
        values = dataclasses.asdict(current)
        for k, v in overrides.items():
            values[k] = _coerce(cls.__name__, k, types_[k], v)
        if section == "model" and "d_ff" not in overrides and "d_model" in overrides:
            values["d_ff"] = 0  # re-derive 4 * d_model unless given
        if section == "model" and "t5_max_distance" not in overrides and "block_size" in overrides:
            values["t5_max_distance"] = 0  # re-derive from the trained length unless given
        if section == "model" and "rope_original_length" not in overrides \
                and "block_size" in overrides:
            values["rope_original_length"] = 0  # likewise
        out.append(cls(**values))
    return RunConfig(model=out[0], train=out[1])


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read as UTF-8 text "
                          f"({e.__class__.__name__}).") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}.") from None


def _check_int(obj: Any, name: str, lo: int, hi: int) -> None:
    v = getattr(obj, name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{arg(name)} must be an integer, got {v!r}.")
    if not lo <= v <= hi:
        raise ConfigError(f"{arg(name)} must be between {lo} and {hi}, got {v}.")


def _check_float(obj: Any, name: str, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    v = getattr(obj, name)
    if not _is_number(v):
        raise ConfigError(f"{arg(name)} must be a finite number, got {v!r}.")
    too_low = v <= lo if lo_open else v < lo
    too_high = v >= hi if hi_open else v > hi
    if too_low or too_high:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ConfigError(f"{arg(name)} must be in {lb}{lo}, {hi}{rb}, got {v}.")
    setattr(obj, name, float(v))


class _Encodings(Sequence[str]):
    """The registered positional encodings, looked up on first use: building the command
    line parser must not import torch (which the registry's modules need)."""

    def _names(self) -> tuple[str, ...]:
        from .positional import REGISTRY  # late import: positional needs this module

        return tuple(REGISTRY)

    def __getitem__(self, i):  # type: ignore[override]
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()


def choices(cls: type, name: str) -> Sequence[str] | None:
    """The allowed values of a string setting (its Literal annotation, or the registered
    encodings for `pos`), or None if any value of its type goes."""
    if cls is ModelConfig and name == "pos":
        return _Encodings()
    typ = field_types(cls)[name]
    return typing.get_args(typ) if typing.get_origin(typ) is Literal else None


def _check_choice(obj: Any, name: str) -> None:
    v = getattr(obj, name)
    allowed = choices(type(obj), name) or ()
    if v not in allowed:
        raise ConfigError(f"{arg(name)} must be one of {', '.join(allowed)}, got {v!r}.")
