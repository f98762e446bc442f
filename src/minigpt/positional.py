"""Positional encodings as plug-ins.

Position information can enter a GPT at three points, and the model calls all three hooks
at fixed places without ever asking which encoding it has:

    embed(x, pos)      added to the token embeddings          learned, sinusoidal
    rotate(q, k, pos)  rotates queries and keys per head      rope
    bias(q_pos, k_pos) added to the attention scores          alibi, t5

Each hook is a no-op by default (that is `nope`). Before them, every forward pass calls
`set_length(n)` (the length of the whole sequence the pass belongs to) and `prepare(n)`.
Adding an encoding is one subclass and one `@register` line. `pos` tensors hold absolute
token positions (long, shape (T,)), so the same code serves a full forward pass and cached
generation at any offset.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn

from .errors import ConfigError, MiniGPTError

if TYPE_CHECKING:  # config looks encodings up here, so this module must not import it
    from .config import ModelConfig

REGISTRY: dict[str, type["PositionalEncoding"]] = {}


def register(cls: type["PositionalEncoding"]) -> type["PositionalEncoding"]:
    REGISTRY[cls.name] = cls
    return cls


def build(cfg: ModelConfig) -> "PositionalEncoding":
    return REGISTRY[cfg.pos](cfg)


class PositionLimitError(MiniGPTError):
    """Raised when an encoding that cannot extrapolate is asked for a position past L."""


class PositionalEncoding(nn.Module):
    """The interface, and everything the rest of the program knows about an encoding."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line: the playground shows it on each model
    extrapolates: ClassVar[bool] = True  # defined (and meaningful) past block_size?
    where: ClassVar[str] = "nowhere"
    picture: ClassVar[str | None] = None  # what `minigpt viz` draws: table | rotary | bias
    picture_needs_checkpoint: ClassVar[bool] = False  # the picture shows trained values
    hf_architecture: ClassVar[str | None] = None  # the transformers class it exports to exactly
    # model settings a trained checkpoint may change without changing its weights: given at
    # load time (sample, evaluation, viz) and, with block_size, when fine-tuning (--init-from)
    extension_settings: ClassVar[tuple[str, ...]] = ()
    reads_positions: ClassVar[bool] = True  # False: random_positions has nothing to act on

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def prepare(self, n: int, device: torch.device) -> None:
        """Get ready for positions 0..n-1 (grow tables); refuse positions it cannot encode.

        Called once per forward pass with plain ints, so the hooks below never need to read
        a tensor back to the host (no syncs, no torch.compile graph breaks).
        """

    def set_length(self, n: int) -> None:
        """The length of the whole sequence the coming positions belong to: the pass's own
        length, the capacity of its key/value cache, or what the caller says. Only values
        that depend on the sequence length read it (rope's dynamic scaling)."""

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        return None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_parameter(self, name: str, p: torch.Tensor,
                       generator: torch.Generator | None = None) -> bool:
        """Give parameter `name` (relative to this module) its initial value and return True,
        or return False to let the model draw it like any other weight (std 0.02).
        `generator` is the parameter's own seeded generator, for random initial values."""
        return False

    def bias_reach(self) -> int | None:
        """The distance past which `bias` stops changing (None: it never stops, or no bias)."""
        return None

    def untrained(self, trained_len: int, eval_len: int) -> str | None:
        """Which of this encoding's parameters are used at `eval_len` tokens but never get a
        gradient in training at `trained_len` tokens (None when there are none)."""
        return None

    def learned_summary(self) -> dict[str, float]:
        """Learned scalars that matter for reading a study's result (reported per run)."""
        return {}

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        """Refuse, with a ConfigError, model settings this encoding cannot work with."""

    @classmethod
    def legacy_state(cls, cfg: ModelConfig, saved: dict) -> dict[str, torch.Tensor]:
        """Values for parameters this encoding gained after a checkpoint was written (`saved`
        is its config.json model section) that make it compute what it computed then."""
        return {}

    @classmethod
    def settings_note(cls, cfg: ModelConfig) -> str | None:
        """A sentence naming this encoding's own settings, for the list of what a study held
        equal (None: it has none worth naming)."""
        return None


@register
class NoPE(PositionalEncoding):
    """No positional information at all: the causal mask is the only cue (Kazemnejad 2023)."""

    name = "nope"
    description = "no positional information: the causal mask is the only cue"
    reads_positions = False


@register
class Learned(PositionalEncoding):
    """A trained vector per absolute position, added to the token embedding (GPT-2)."""

    name = "learned"
    description = "a trained vector per position added to the token embedding (GPT-2)"
    extrapolates = False
    where = "added to token embeddings"
    picture = "table"
    picture_needs_checkpoint = True
    hf_architecture = "GPT2LMHeadModel"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.size = cfg.random_positions or cfg.block_size  # random positions: [0, N)
        self.wpe = nn.Embedding(self.size, cfg.d_model)
        # Trained on positions drawn from [0, N), the table is defined past block_size (up to
        # N, where `prepare` stops it): this model does extrapolate, the plain one does not.
        self.extrapolates = bool(cfg.random_positions)

    def untrained(self, trained_len: int, eval_len: int) -> str | None:
        if eval_len > trained_len and not self.cfg.random_positions:
            return f"learned positions {trained_len}-{eval_len - 1} never received a gradient"
        return None

    def prepare(self, n: int, device: torch.device) -> None:
        if n > self.size:
            limit = "random_positions" if self.cfg.random_positions else "block_size"
            raise PositionLimitError(
                f"learned positions stop at {limit} {self.size}: this model cannot score "
                f"position {n - 1}; use a sequence of at most {self.size} tokens."
            )

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + self.wpe(pos)  # (B, T, C) + (T, C)

    def table(self, n: int | None = None) -> torch.Tensor:
        """(n, C) what `embed` adds to the token embeddings."""
        return self.wpe.weight[: n or self.cfg.block_size].detach()

    def table_label(self) -> str:
        return "value added to the token embedding"


def sinusoid_table(positions: torch.Tensor, d: int) -> torch.Tensor:
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
    i = torch.arange(0, d, 2, dtype=torch.float64)
    angle = positions.to(torch.float64)[:, None] / (10000.0 ** (i / d))[None, :]  # (T, d/2)
    pe = torch.zeros(len(positions), d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d // 2])
    return pe.to(torch.float32)


TOKEN_EMBED_STD = 0.02  # GPT-2's init of the token embedding (model.GPT.init_weights)
TABLE_RMS = math.sqrt(0.5)  # rms of a sin/cos table over positions and dimensions


@register
class Sinusoidal(PositionalEncoding):
    """Fixed sin/cos waves of geometric wavelengths, added to the token embedding.

    The table is the closed form above times one learned scalar `scale`, as x-transformers'
    `ScaledSinusoidalEmbedding`. What matters is the strength of the position signal against
    the token signal: Vaswani et al. multiply the embeddings by sqrt(d_model), which with
    their init gives token rms 1 against table rms 0.71, a ratio of about 0.7. `scale`
    starts where rms(scale * table) / rms(token embedding) = `sinusoidal_ratio` (0.7 by
    default), whatever d_model is, and training may change it.
    """

    name = "sinusoidal"
    description = "fixed sin/cos waves added to the token embedding (Vaswani et al.)"
    where = "added to token embeddings"
    picture = "table"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("pe", sinusoid_table(torch.arange(cfg.block_size), cfg.d_model),
                             persistent=False)
        self.scale = nn.Parameter(torch.tensor(self.initial_scale()))

    def initial_scale(self) -> float:
        return self.cfg.sinusoidal_ratio * TOKEN_EMBED_STD / TABLE_RMS

    def init_parameter(self, name: str, p: torch.Tensor,
                       generator: torch.Generator | None = None) -> bool:
        p.fill_(self.initial_scale())
        return True

    def learned_summary(self) -> dict[str, float]:
        return {"scale": float(self.scale.detach()), "initial_scale": self.initial_scale()}

    @classmethod
    def legacy_state(cls, cfg: ModelConfig, saved: dict) -> dict[str, torch.Tensor]:
        if "sinusoidal_ratio" in saved:
            return {}
        # written before the learned scale: the table was added times 1/sqrt(d_model)
        return {"scale": torch.tensor(cfg.d_model ** -0.5)}

    @classmethod
    def settings_note(cls, cfg: ModelConfig) -> str | None:
        return (f"Sinusoidal strength: the table is added times a learned scalar that starts "
                f"where the position signal's rms is {cfg.sinusoidal_ratio:g} x the token "
                "embeddings' rms (Vaswani et al.'s ratio is about 0.7; x-transformers' "
                "ScaledSinusoidalEmbedding also learns the scale).")

    def prepare(self, n: int, device: torch.device) -> None:
        if n > self.pe.shape[0]:
            n = max(n, 2 * self.pe.shape[0])
            self.pe = sinusoid_table(torch.arange(n), self.cfg.d_model).to(self.pe.device)

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + (self.pe[pos] * self.scale).to(x.dtype)  # (B, T, C) + (T, C)

    def table(self, n: int | None = None) -> torch.Tensor:
        """(n, C) what `embed` adds to the token embeddings: scale x the closed-form table."""
        n = n or self.cfg.block_size
        self.prepare(n, self.pe.device)
        return (self.pe[:n] * self.scale).detach()

    def table_label(self) -> str:
        return (f"value added to the token embedding (learned scale "
                f"{self.scale.item():.3g} x the sin/cos table)")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


# --- rope and its context-extension methods ---------------------------------------------------
#
# Each method changes only the rotation frequencies theta_i (i = 0 .. hs/2 - 1) and, for
# YaRN, the size of q and k; `rope_frequencies` returns both, for a model config and (for
# dynamic) the sequence length. L is rope_original_length (the trained length), s rope_factor.

YARN_BETA_FAST = 32.0  # YaRN: pairs that turn more than this often within L keep theta_i
YARN_BETA_SLOW = 1.0  # ... pairs that turn less than once within L are interpolated (theta_i / s)
LLAMA3_LOW_FREQ_FACTOR = 1.0  # llama3: wavelengths above L / this are interpolated
LLAMA3_HIGH_FREQ_FACTOR = 4.0  # ... wavelengths below L / this are kept


def rope_inv_freq(hs: int, base: float) -> torch.Tensor:
    """Su et al.: theta_i = base^(-2i/hs), (hs/2,) fp32, computed as transformers does."""
    return 1.0 / (base ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))


def ntk_base(base: float, factor: float, hs: int) -> float:
    """NTK-aware scaling (bloc97, 2023): base * s^(hs/(hs-2)), so that the slowest pair turns
    s times slower (position interpolation there) while the fastest is almost unchanged."""
    return base * factor ** (hs / (hs - 2))


def dynamic_base(base: float, factor: float, hs: int, length: int, original: int) -> float:
    """Dynamic NTK (emozilla 2023; transformers' `dynamic`): the NTK base for a sequence of
    `length` tokens, base * (s * n / L - (s - 1))^(hs/(hs-2)) with n = max(length, L), so
    plain RoPE up to L and a growing base past it."""
    n = max(length, original)
    return base * (factor * n / original - (factor - 1)) ** (hs / (hs - 2))


def yarn_attention_factor(factor: float) -> float:
    """YaRN's sqrt(1/t) = 0.1 ln(s) + 1 (Peng et al. 2023, eq. 22): q and k are each
    multiplied by it, so the attention logits are multiplied by 1/t."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def yarn_ramp_bounds(hs: int, base: float, original: int) -> tuple[int, int]:
    """The pairs between which YaRN's NTK-by-parts ramp runs: the pair index where a pair
    turns r = L / wavelength times within L is hs ln(L / (2 pi r)) / (2 ln base); low for
    r = beta_fast (floor), high for r = beta_slow (ceil), clipped to [0, hs - 1] (the
    reference code's `find_correction_range`, which transformers follows)."""
    def pair(rotations: float) -> float:
        return hs * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(pair(YARN_BETA_FAST)), 0)
    high = min(math.ceil(pair(YARN_BETA_SLOW)), hs - 1)
    return low, high


def rope_frequencies(cfg: ModelConfig, length: int | None = None) -> tuple[torch.Tensor, float]:
    """(theta (hs/2,) fp32, attention factor) of a rope config; `length` is the sequence
    length, read by `dynamic` only (default: rope_original_length)."""
    hs, base, s = cfg.head_size, cfg.rope_base, cfg.rope_factor
    L, method = cfg.rope_original_length, cfg.rope_scaling
    if method == "ntk":
        return rope_inv_freq(hs, ntk_base(base, s, hs)), 1.0
    if method == "dynamic":
        return rope_inv_freq(hs, dynamic_base(base, s, hs, length or L, L)), 1.0
    theta = rope_inv_freq(hs, base)
    if method == "linear":  # Chen et al. 2023: positions divided by s, i.e. theta_i / s
        return theta / s, 1.0
    if method == "yarn":
        # NTK-by-parts: gamma = 1 keeps theta_i (fast pairs), gamma = 0 interpolates
        # (theta_i / s, slow pairs), linear in the pair index in between
        low, high = yarn_ramp_bounds(hs, base, L)
        ramp = (torch.arange(hs // 2, dtype=torch.float32) - low) / max(high - low, 0.001)
        gamma = 1 - ramp.clamp(0, 1)
        wave = base ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)  # 1 / theta_i
        return 1 / (s * wave) * (1 - gamma) + theta * gamma, yarn_attention_factor(s)
    if method == "llama3":
        # Meta's Llama 3.1: wavelengths above L/low_freq_factor interpolated, below
        # L/high_freq_factor kept, and a smooth mix (linear in L / wavelength) between
        wavelen = 2 * math.pi / theta
        lo_wave, hi_wave = L / LLAMA3_LOW_FREQ_FACTOR, L / LLAMA3_HIGH_FREQ_FACTOR
        smooth = (L / wavelen - LLAMA3_LOW_FREQ_FACTOR) / (
            LLAMA3_HIGH_FREQ_FACTOR - LLAMA3_LOW_FREQ_FACTOR)
        out = torch.where(wavelen > lo_wave, theta / s, theta)
        mixed = (1 - smooth) * out / s + smooth * out
        middle = (wavelen >= hi_wave) & (wavelen <= lo_wave)
        return torch.where(middle, mixed, out), 1.0
    return theta, 1.0


ROPE_PAPERS = {
    "linear": "position interpolation (Chen et al. 2023)",
    "ntk": "NTK-aware scaling (bloc97 2023)",
    "dynamic": "dynamic NTK (emozilla 2023, as transformers' dynamic)",
    "yarn": "YaRN (Peng et al. 2023; beta_fast 32, beta_slow 1, q and k times 0.1 ln s + 1)",
    "llama3": "Llama 3.1 scaling (low/high frequency factors 1 and 4)",
}


@register
class Rotary(PositionalEncoding):
    """RoPE (Su et al. 2021): rotate each (i, i + hs/2) pair of q and k by pos * base^(-2i/hs).

    The half-split pairing is GPT-NeoX's convention, so a rope model maps exactly onto
    `GPTNeoXForCausalLM` with the full rotary dimension.

    `rope_scaling` picks a context-extension method (see `rope_frequencies`): they change
    the frequencies, and YaRN also multiplies the cos/sin tables by its attention factor
    (so q and k, as transformers and the YaRN reference code do). `dynamic` computes the
    frequencies from the length of the whole sequence (`set_length`): a forward pass of n
    tokens uses n, a pass with a key/value cache uses the cache's capacity (a generation's
    prompt + new tokens, or its window), fixed for the whole generation so that every
    cached key was rotated with the frequencies the queries use (docs/positional.md).
    """

    name = "rope"
    description = "rotary: queries and keys rotated by position (Su et al.)"
    where = "rotates queries and keys"
    picture = "rotary"
    hf_architecture = "GPTNeoXForCausalLM"
    extension_settings = ("rope_scaling", "rope_factor")

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        if cfg.head_size % 2:
            raise ConfigError("pos 'rope' needs an even head size (d_model / n_head).")
        if cfg.rope_scaling == "none" and cfg.rope_factor != 1.0:
            raise ConfigError(f"rope_factor {cfg.rope_factor:g} needs a context-extension "
                              "method: set rope_scaling to linear, ntk, dynamic, yarn or "
                              "llama3, or leave rope_factor at 1.")
        if cfg.rope_scaling != "none" and cfg.rope_factor < 1.0:
            raise ConfigError(f"rope_factor must be at least 1 (the length aimed at over the "
                              f"trained length), got {cfg.rope_factor:g}.")
        if cfg.rope_scaling in ("ntk", "dynamic") and cfg.head_size <= 2:
            raise ConfigError(f"rope_scaling {cfg.rope_scaling} needs a head size above 2 "
                              "(its base grows as s^(hs/(hs-2))).")
        if cfg.rope_original_length > cfg.block_size:
            raise ConfigError(f"rope_original_length ({cfg.rope_original_length}) is the "
                              f"length rope was first trained at and cannot exceed block_size "
                              f"({cfg.block_size}).")

    @classmethod
    def settings_note(cls, cfg: ModelConfig) -> str | None:
        if cfg.rope_scaling == "none":
            return None
        return (f"RoPE context extension: {ROPE_PAPERS[cfg.rope_scaling]}, factor "
                f"{cfg.rope_factor:g} from the trained length {cfg.rope_original_length} "
                f"(base {cfg.rope_base:g}).")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        inv_freq, self.attn_factor = rope_frequencies(cfg)
        self.freq_length = cfg.rope_original_length  # dynamic: the length inv_freq is for
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hs/2,)
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.prepare(cfg.block_size, inv_freq.device)

    def set_length(self, n: int) -> None:
        if self.cfg.rope_scaling != "dynamic":
            return
        n = max(n, self.cfg.rope_original_length)  # plain RoPE up to the trained length
        if n != self.freq_length:
            self.freq_length = n
            self.inv_freq = rope_frequencies(self.cfg, n)[0].to(self.inv_freq.device)
            self.cos = self.cos[:0]  # rebuilt by prepare with the new frequencies

    def prepare(self, n: int, device: torch.device) -> None:
        if self.cos.shape[0] < n or self.cos.device != device:
            n = max(n, self.cfg.block_size, 2 * self.cos.shape[0])
            t = torch.arange(n, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))  # (n, hs/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n, hs)
            self.cos, self.sin = emb.cos(), emb.sin()
            if self.attn_factor != 1.0:  # YaRN: q and k each times sqrt(1/t)
                self.cos, self.sin = self.cos * self.attn_factor, self.sin * self.attn_factor

    def rotate(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.cos[pos].to(q.dtype), self.sin[pos].to(q.dtype)  # (T, hs)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Press et al. 2022: geometric slopes 2^(-8/n) ... ; for n not a power of two, take the
    slopes of the closest smaller power of two, then every other slope of twice that."""

    def pow2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(pow2(n_head))
    m = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(pow2(m) + pow2(2 * m)[0::2][: n_head - m])


@register
class ALiBi(PositionalEncoding):
    """Attention with Linear Biases: score(i, j) -= slope_h * (i - j)."""

    name = "alibi"
    description = "a linear distance penalty on attention scores (Press et al.)"
    where = "biases attention scores"
    picture = "bias"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("slopes", alibi_slopes(cfg.n_head), persistent=False)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        dist = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).to(self.slopes.dtype)  # (Tq, Tk)
        return -self.slopes[:, None, None] * dist  # (nh, Tq, Tk)


def t5_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's causal (one-directional) bucket of relative position rel = key - query.

    Distances n = max(-rel, 0) below num_buckets/2 get their own bucket; larger ones share
    logarithmically wider buckets up to max_distance; everything further is the last bucket.
    """
    n = (-rel).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = large.clamp(max=num_buckets - 1)
    return torch.where(is_small, n, large)


@register
class T5Bias(PositionalEncoding):
    """T5's learned scalar bias per head and relative-distance bucket (Raffel et al. 2020)."""

    name = "t5"
    description = "a learned bias per head and distance bucket (Raffel et al.)"
    where = "biases attention scores"
    picture = "bias"
    picture_needs_checkpoint = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.rel_bias = nn.Embedding(cfg.t5_num_buckets, cfg.n_head)

    def bias_reach(self) -> int | None:
        return self.cfg.t5_max_distance

    @classmethod
    def settings_note(cls, cfg: ModelConfig) -> str | None:
        return (f"T5 buckets: {cfg.t5_num_buckets} buckets, max distance "
                f"{cfg.t5_max_distance} tokens.")

    def buckets_used(self, length: int) -> set[int]:
        """The buckets that the distances 0 .. length-1 fall into."""
        n = torch.arange(length)
        return set(t5_bucket(-n, self.cfg.t5_num_buckets, self.cfg.t5_max_distance).tolist())

    def untrained(self, trained_len: int, eval_len: int) -> str | None:
        trained_len = max(trained_len, self.cfg.random_positions)  # distances seen in training
        never = sorted(self.buckets_used(eval_len) - self.buckets_used(trained_len))
        if not never:
            return None
        return (f"t5 buckets {never[0]}-{never[-1]} (distances past the trained "
                f"{trained_len} tokens, t5_max_distance {self.cfg.t5_max_distance}) never "
                "received a gradient")

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        rel = k_pos[None, :] - q_pos[:, None]  # (Tq, Tk)
        buckets = t5_bucket(rel, self.cfg.t5_num_buckets, self.cfg.t5_max_distance)
        return self.rel_bias(buckets).permute(2, 0, 1)  # (Tq, Tk, nh) -> (nh, Tq, Tk)


# --- encodings built for length generalization --------------------------------------------

def positive(p: torch.Tensor, floor: float) -> torch.Tensor:
    """p clamped to at least `floor`, with the gradient of p itself (straight through).

    The Kerple reference clamps its parameters' data in place before each use; the value
    here is the same, but the op is pure (no side effect in forward), and a parameter pushed
    below the floor still gets a gradient that can bring it back.
    """
    return p + (p.clamp(min=floor) - p).detach()


FIRE_C0 = 0.1  # initial c of psi(x) = log(c x + 1), as the reference FIRE
FIRE_EPS = 1e-6  # keeps the normaliser away from zero (reference)


def fire_inputs(q_pos: torch.Tensor, k_pos: torch.Tensor, c: torch.Tensor,
                threshold: torch.Tensor) -> torch.Tensor:
    """Li et al. 2023, eq. (FIRE): psi(i - j) / psi(max(L, i)) with psi(x) = log(|c| x + 1).

    (Tq,), (Tk,) positions -> (Tq, Tk) MLP inputs, in [0, 1] for keys at or before the
    query (future keys, masked anyway, are treated as distance 0).
    """
    c = c.abs()
    dist = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).to(c.dtype)  # (Tq, Tk)
    norm = torch.log(c * torch.maximum(q_pos.to(c.dtype), threshold) + 1)  # (Tq,)
    return torch.log(c * dist + 1) / (norm[:, None] + FIRE_EPS)


@register
class FIRE(PositionalEncoding):
    """FIRE (Li et al. 2023): a small MLP f of the log-scaled distance, normalised by the
    log-scaled query position (but at least a learned threshold L), one output per head:
    bias(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1), c learned.

    As the reference (mcleish7/arithmetic `FIRE`): MLP 1 -> width -> n_head with ReLU, c
    starts at 0.1, and L is a fixed start value (here block_size) times a learned multiplier
    that starts at 1. One bias serves every layer, as with t5 here.
    """

    name = "fire"
    description = "a learned MLP of the normalised log distance per head (Li et al. 2023)"
    where = "biases attention scores"
    picture = "bias"
    picture_needs_checkpoint = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        w = cfg.fire_mlp_width
        self.mlp = nn.Sequential(nn.Linear(1, w), nn.ReLU(), nn.Linear(w, cfg.n_head))
        self.c = nn.Parameter(torch.tensor(FIRE_C0))
        self.threshold_scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("threshold0", torch.tensor(float(cfg.block_size)),
                             persistent=False)

    def init_parameter(self, name: str, p: torch.Tensor,
                       generator: torch.Generator | None = None) -> bool:
        if name.startswith("mlp."):  # PyTorch's nn.Linear default: U(+-1/sqrt(fan_in))
            fan_in = self.mlp[int(name.split(".")[1])].in_features
            bound = fan_in ** -0.5
            p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
        else:
            p.fill_(FIRE_C0 if name == "c" else 1.0)
        return True

    def threshold(self) -> torch.Tensor:
        return (self.threshold_scale * self.threshold0).abs()

    def inputs(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return fire_inputs(q_pos, k_pos, self.c, self.threshold())

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        x = self.inputs(q_pos, k_pos)  # (Tq, Tk)
        return self.mlp(x[..., None]).permute(2, 0, 1)  # (Tq, Tk, nh) -> (nh, Tq, Tk)

    def untrained(self, trained_len: int, eval_len: int) -> str | None:
        """The MLP's inputs a longer evaluation reaches that training never did: training
        (positions below `trained_len`, or below random_positions N) reaches at most
        psi(n - 1) / psi(max(L, n - 1))."""
        seen = max(self.cfg.random_positions, trained_len)
        with torch.no_grad():
            hi = [float(self.inputs(torch.tensor([n - 1]), torch.tensor([0]))[0, 0])
                  for n in (seen, eval_len)]
        if hi[1] <= hi[0] + 1e-6:
            return None
        return (f"fire's MLP inputs {hi[0]:.3f}-{hi[1]:.3f} (normalised distances past the "
                f"trained {seen} positions) were never seen in training")

    @classmethod
    def settings_note(cls, cfg: ModelConfig) -> str | None:
        return (f"FIRE: MLP width {cfg.fire_mlp_width}, c starts at {FIRE_C0:g}, threshold "
                f"L starts at block_size {cfg.block_size} (both learned).")


KERPLE_FLOOR = 1e-2  # the reference's eps: r1, r2 never go below it


@register
class KerpleLog(PositionalEncoding):
    """Kerple, logarithmic variant (Chi et al. 2022): bias(i, j) = -r1 log(1 + r2 |i - j|)
    with r1, r2 > 0 learned per head (reference: chijames/KERPLE `ParallelKerpleLog`).

    The reference draws r1 ~ U(0, 2) and r2 ~ U(0, 1) per head; here head h starts at the
    midpoints of those ranges' n_head equal slices, r1 = 2 (h + 1/2) / n_head and
    r2 = (h + 1/2) / n_head, so every seed and every run starts with the same spread of heads.
    """

    name = "kerple"
    description = "a learned logarithmic distance penalty per head (Chi et al. 2022)"
    where = "biases attention scores"
    picture = "bias"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.r1 = nn.Parameter(self.initial(2.0))
        self.r2 = nn.Parameter(self.initial(1.0))

    def initial(self, scale: float) -> torch.Tensor:
        return (torch.arange(self.cfg.n_head, dtype=torch.float32) + 0.5) / self.cfg.n_head * scale

    def init_parameter(self, name: str, p: torch.Tensor,
                       generator: torch.Generator | None = None) -> bool:
        p.copy_(self.initial(2.0 if name == "r1" else 1.0))
        return True

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        r1 = positive(self.r1, KERPLE_FLOOR)[:, None, None]  # (nh, 1, 1)
        r2 = positive(self.r2, KERPLE_FLOOR)[:, None, None]
        dist = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).to(r1.dtype)  # (Tq, Tk)
        return -r1 * torch.log1p(r2 * dist)  # (nh, Tq, Tk)


def sample_positions(n: int, limit: int, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Ruoss et al. 2023: n distinct positions drawn uniformly from [0, limit), sorted.

    Drawn on the CPU (the same sample on every device) from `generator`, or from torch's
    global CPU generator when None (training: seeded by the run's seed, saved and restored
    with the checkpoint). Returns (n,) long.
    """
    if n > limit:
        raise PositionLimitError(
            f"random_positions is {limit}, so a sequence of {n} tokens cannot get {n} distinct "
            f"positions; use at most {limit} tokens or train with a larger random_positions."
        )
    return torch.randperm(limit, generator=generator)[:n].sort().values


def eval_positions(n: int, limit: int) -> torch.Tensor:
    """The positions of an n-token sequence outside training: one fixed sorted sample per
    length n (a generator seeded with n), so every evaluation and every sampling run of a
    random-positions model sees the same positions, and evaluating consumes nothing of the
    training stream."""
    return sample_positions(n, limit, torch.Generator().manual_seed(n))
