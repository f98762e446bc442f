"""Hugging Face interop: export a checkpoint as a `transformers` model, import one back.

Which encodings leave, and as what:

    learned -> GPT2LMHeadModel      (learned absolute positions, `wpe`)
    rope    -> GPTNeoXForCausalLM   (rotary, full head dim, sequential residual, tied head)
    sinusoidal, alibi, nope, t5 -> refused: neither architecture computes them, so no set
    of weights would give the same logits (GPT-2 can only *learn* a position table, and
    freezing a sinusoid into `wpe` would silently lose extrapolation; ALiBi, T5 buckets and
    NoPE have no GPT-2/GPT-NeoX equivalent).

The model is GPT-2-shaped on purpose, so the mapping is a renaming, not an approximation:
pre-LayerNorm blocks, LayerNorm eps 1e-5 with bias, GELU (our default exact-erf `gelu` maps to
HF `gelu`; `gelu_tanh` to GPT-2's `gelu_new`), biases in every Linear, LM head tied to the
token embedding,
attention scaled by 1/sqrt(head size).

GPT-2 (ours -> `transformer.` prefix in HF):

    tok_emb.weight                 wte.weight
    pos.wpe.weight                 wpe.weight
    blocks.i.ln_1 / ln_2           h.i.ln_1 / ln_2              (weight, bias)
    blocks.i.attn.c_attn           h.i.attn.c_attn              Linear (3C, C) -> Conv1D (C, 3C)
    blocks.i.attn.c_proj           h.i.attn.c_proj              transposed likewise
    blocks.i.mlp.c_fc / c_proj     h.i.mlp.c_fc / c_proj        transposed likewise
    ln_f                           ln_f
    lm_head (tied)                 lm_head (tied, not stored)

HF GPT-2 uses `Conv1D`, whose weight is the transpose of `nn.Linear`'s; the fused q, k, v
order along the output dimension is the same as ours.

GPT-NeoX (ours -> `gpt_neox.` prefix in HF), with `use_parallel_residual=False` (GPT-2's
sequential residual), `rotary_pct=1.0` / `partial_rotary_factor=1.0` (rotate the whole head),
`rotary_emb_base` / `rope_theta` = our `rope_base`, `tie_word_embeddings=True`:

    tok_emb.weight                 embed_in.weight
    blocks.i.ln_1 / ln_2           layers.i.input_layernorm / post_attention_layernorm
    blocks.i.attn.c_attn           layers.i.attention.query_key_value   rows permuted
    blocks.i.attn.c_proj           layers.i.attention.dense
    blocks.i.mlp.c_fc / c_proj     layers.i.mlp.dense_h_to_4h / dense_4h_to_h
    ln_f                           final_layer_norm

Our fused projection is laid out [q (all heads) | k | v]; GPT-NeoX views its output as
(nh, 3, hs), i.e. [q_0 k_0 v_0 | q_1 k_1 v_1 | ...], so the rows are regrouped per head.
Both rotate with the half-split convention (`rotate_half`, cos/sin of cat(freqs, freqs)).

A model trained with `bias=False` is exported with zero biases, which computes exactly the
same function (GPT-2 and GPT-NeoX always carry biases); it imports back as `bias=True`.

Tokenizers export as `PreTrainedTokenizerFast` (a `tokenizer.json` that `AutoTokenizer`
loads) and give the same ids as ours: `bpe` as is (byte-level BPE); `char` as a WordLevel
vocabulary over single characters behind a pre-tokenizer that isolates every character
(whitespace and newlines included; unknown characters become `<pad>`); `word` as a WordLevel
vocabulary behind a Split pre-tokenizer on our `WORD_RE`, with `<unk>` for unknown words.

Import reads only local directories (never the Hub) and only safetensors (never pickle), and
needs neither `transformers` nor a network; export needs `transformers` (`minigpt[hf]`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, RunConfig, TrainConfig
from .errors import MiniGPTError
from .files import staged_dir
from .tokenizers import (
    EOS,
    NO_SPACE_AFTER,
    NO_SPACE_BEFORE,
    PAD,
    UNK,
    WORD_RE,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
)

def export_architecture(pos: str) -> str | None:
    """The transformers class an encoding exports to exactly (the encoding says), or None."""
    from .positional import REGISTRY

    return REGISTRY[pos].hf_architecture if pos in REGISTRY else None


IMPORTABLE = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM"}
# `architectures` entries accepted per model_type (a headless base model has a tied head too)
ACCEPTED = {"gpt2": {"GPT2LMHeadModel", "GPT2Model"},
            "gpt_neox": {"GPTNeoXForCausalLM", "GPTNeoXModel"}}
CHAR_SPLIT = r"[\s\S]"  # one piece per character, newlines included (Oniguruma has no (?s))
HF_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# HF activation names that are exactly (up to float rounding) one of ours
FROM_HF_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu": "gelu"}
GPT2_EOS = "<|endoftext|>"
INSTALL_HINT = "pip install 'minigpt[hf]'"


class HFError(MiniGPTError):
    """A model or directory that cannot be converted to or from Hugging Face format."""


def require_transformers() -> Any:
    """Import `transformers` lazily, with a clear message when it is missing."""
    try:
        import transformers
    except ImportError:
        raise HFError("Hugging Face export needs the transformers package; install it with "
                      f"{INSTALL_HINT}.") from None
    return transformers


# --- weights: pure tensor renaming, no transformers needed ------------------------------------

def _fill_biases(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Zero biases for a bias=False model, so it fits architectures that always have them."""
    if cfg.bias:
        return state
    out = dict(state)
    C, F = cfg.d_model, cfg.d_ff
    sizes = {"ln_1": C, "ln_2": C, "attn.c_attn": 3 * C, "attn.c_proj": C, "mlp.c_fc": F,
             "mlp.c_proj": C}
    for i in range(cfg.n_layer):
        for name, n in sizes.items():
            out.setdefault(f"blocks.{i}.{name}.bias", torch.zeros(n))
    out.setdefault("ln_f.bias", torch.zeros(C))
    return out


def _block_pairs(i: int, arch: str) -> list[tuple[str, str, bool]]:
    """(our name, HF name, transpose?) of the per-layer tensors, without the HF prefix."""
    if arch == "gpt2":
        h, t = f"h.{i}", True
        names = [("ln_1", "ln_1", False), ("ln_2", "ln_2", False),
                 ("attn.c_attn", "attn.c_attn", t), ("attn.c_proj", "attn.c_proj", t),
                 ("mlp.c_fc", "mlp.c_fc", t), ("mlp.c_proj", "mlp.c_proj", t)]
    else:
        h = f"layers.{i}"
        names = [("ln_1", "input_layernorm", False), ("ln_2", "post_attention_layernorm", False),
                 ("attn.c_attn", "attention.query_key_value", False),
                 ("attn.c_proj", "attention.dense", False),
                 ("mlp.c_fc", "mlp.dense_h_to_4h", False),
                 ("mlp.c_proj", "mlp.dense_4h_to_h", False)]
    pairs = []
    for ours, theirs, transpose in names:
        pairs.append((f"blocks.{i}.{ours}.weight", f"{h}.{theirs}.weight", transpose))
        pairs.append((f"blocks.{i}.{ours}.bias", f"{h}.{theirs}.bias", False))
    return pairs


def _qkv_to_neox(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows [q | k | v] (3C, ...) -> GPT-NeoX's per-head [q_h k_h v_h] order."""
    rest = t.shape[1:]
    hs = t.shape[0] // (3 * n_head)
    # (3, nh, hs, ...) -> (nh, 3, hs, ...)
    return t.reshape(3, n_head, hs, *rest).transpose(0, 1).reshape(t.shape).contiguous()


def _qkv_from_neox(t: torch.Tensor, n_head: int) -> torch.Tensor:
    rest = t.shape[1:]
    hs = t.shape[0] // (3 * n_head)
    # (nh, 3, hs, ...) -> (3, nh, hs, ...)
    return t.reshape(n_head, 3, hs, *rest).transpose(0, 1).reshape(t.shape).contiguous()


def to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the HF CausalLM state dict (GPT-2 for learned, GPT-NeoX for rope)."""
    state = _fill_biases(state, cfg)
    arch = "gpt2" if cfg.pos == "learned" else "gpt_neox"
    prefix = "transformer." if arch == "gpt2" else "gpt_neox."
    out: dict[str, torch.Tensor] = {}
    if arch == "gpt2":
        out["wte.weight"] = state["tok_emb.weight"]
        out["wpe.weight"] = state["pos.wpe.weight"]
        out["ln_f.weight"], out["ln_f.bias"] = state["ln_f.weight"], state["ln_f.bias"]
    else:
        out["embed_in.weight"] = state["tok_emb.weight"]
        out["final_layer_norm.weight"] = state["ln_f.weight"]
        out["final_layer_norm.bias"] = state["ln_f.bias"]
    for i in range(cfg.n_layer):
        for ours, theirs, transpose in _block_pairs(i, arch):
            t = state[ours]
            if transpose:
                t = t.t()
            if arch == "gpt_neox" and ".c_attn." in ours:
                t = _qkv_to_neox(t, cfg.n_head)
            out[theirs] = t
    return {prefix + k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def from_hf_state(tensors: dict[str, torch.Tensor], cfg: ModelConfig, arch: str
                  ) -> dict[str, torch.Tensor]:
    """HF tensors (prefix already removed) -> our state dict (tied head left out)."""
    def need(name: str) -> torch.Tensor:
        if name not in tensors:
            raise HFError(f"the model's weights lack tensor {name}; the directory is "
                          "incomplete or not a standard checkpoint.")
        return tensors[name]

    out: dict[str, torch.Tensor] = {}
    emb, ln_f = ("wte", "ln_f") if arch == "gpt2" else ("embed_in", "final_layer_norm")
    out["tok_emb.weight"] = need(f"{emb}.weight")
    if arch == "gpt2":
        out["pos.wpe.weight"] = need("wpe.weight")
    out["ln_f.weight"], out["ln_f.bias"] = need(f"{ln_f}.weight"), need(f"{ln_f}.bias")
    for i in range(cfg.n_layer):
        for ours, theirs, transpose in _block_pairs(i, arch):
            if theirs not in tensors and theirs.endswith(".bias") and "attention." in theirs:
                # GPT-NeoX with attention_bias=False: zero biases are the same function
                n = 3 * cfg.d_model if "query_key_value" in theirs else cfg.d_model
                out[ours] = torch.zeros(n)
                continue
            t = need(theirs)
            if transpose:
                t = t.t()
            if arch == "gpt_neox" and "query_key_value" in theirs:
                if t.shape[0] != 3 * cfg.d_model:
                    raise HFError(f"tensor {theirs} has shape {list(t.shape)}, not the "
                                  f"{3 * cfg.d_model} rows its config.json implies.")
                t = _qkv_from_neox(t, cfg.n_head)
            out[ours] = t
    return {k: v.to(torch.float32).contiguous() for k, v in out.items()}


# --- tokenizers --------------------------------------------------------------------------------

def tokenizer_to_hf_backend(tok: Tokenizer) -> Any:
    """Our tokenizer -> a `tokenizers.Tokenizer` that encodes the same ids."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tok, BPETokenizer):
        return HFTokenizer.from_str(tok.hf.to_str())  # a copy: HF may add settings to it
    if isinstance(tok, CharTokenizer):
        vocab = {c: i for i, c in enumerate(tok.chars)}
        vocab[PAD] = tok.pad_id
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=PAD))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_SPLIT), "isolated")
        hf.decoder = decoders.Fuse()  # concatenate the characters, no spaces between
        hf.add_special_tokens([PAD])
        return hf
    if isinstance(tok, WordTokenizer):
        hf = HFTokenizer(models.WordLevel(dict(tok.stoi), unk_token=UNK))
        # findall semantics: the pattern matches the pieces, everything else is dropped
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_RE.pattern), "removed", invert=True)
        # our decode's spacing: a space between tokens (WordPiece adds it, since no token
        # starts with "##"), then removed after NO_SPACE_AFTER and before NO_SPACE_BEFORE
        # marks; every token is a word, one punctuation mark or a newline, so the mark next
        # to a space tells which token it belongs to
        hf.decoder = decoders.Sequence(
            [decoders.WordPiece(prefix="##", cleanup=False), decoders.Fuse()]
            + [decoders.Replace(c + " ", c) for c in sorted(NO_SPACE_AFTER) if len(c) == 1]
            + [decoders.Replace(" " + c, c) for c in sorted(NO_SPACE_BEFORE | {"\n"})
               if len(c) == 1])
        hf.add_special_tokens(list(WordTokenizer.specials))
        return hf
    raise HFError(f"cannot export a {tok.kind!r} tokenizer.")


def special_ids(tok: Tokenizer) -> dict[str, int | None]:
    """bos/eos/pad/unk ids of our tokenizer, None where it has none."""
    if isinstance(tok, BPETokenizer):
        eos = _bpe_eos(tok)
        return {"bos": None, "eos": None if eos is None else tok.hf.token_to_id(eos),
                "pad": tok.pad_id, "unk": None}
    if isinstance(tok, WordTokenizer):
        s = tok.stoi
        return {"bos": s["<bos>"], "eos": s[EOS], "pad": tok.pad_id, "unk": tok.unk_id}
    return {"bos": None, "eos": None, "pad": tok.pad_id, "unk": None}


def _bpe_eos(tok: BPETokenizer) -> str | None:
    """The end-of-text token of a BPE vocabulary: ours (<eos>) or GPT-2's (<|endoftext|>)."""
    return next((t for t in (EOS, GPT2_EOS) if tok.hf.token_to_id(t) is not None), None)


def hf_tokenizer(tok: Tokenizer, model_max_length: int | None = None) -> Any:
    """Our tokenizer -> a `transformers.PreTrainedTokenizerFast` (needs transformers)."""
    transformers = require_transformers()
    backend = tokenizer_to_hf_backend(tok)
    kw: dict[str, Any] = {"pad_token": PAD}
    if isinstance(tok, WordTokenizer):
        kw.update(unk_token=UNK, bos_token="<bos>", eos_token=EOS)
    elif isinstance(tok, BPETokenizer):
        if tok.pad_id is None:
            kw.pop("pad_token")
        if _bpe_eos(tok) is not None:
            kw["eos_token"] = _bpe_eos(tok)
    if model_max_length:
        kw["model_max_length"] = model_max_length
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, clean_up_tokenization_spaces=False, **kw)


def _pre_tokenizer_parts(pt: Any) -> list[dict]:
    if not isinstance(pt, dict):
        return []
    if pt.get("type") == "Sequence":
        return [p for sub in pt.get("pretokenizers", []) for p in _pre_tokenizer_parts(sub)]
    return [pt]


def _split_pattern(pt: dict) -> str | None:
    pat = pt.get("pattern") or {}
    return pat.get("Regex") if isinstance(pat, dict) else None


def tokenizer_from_hf_dir(hf_dir: Path, vocab_size: int) -> Tokenizer:
    """The tokenizer of a HF model directory -> one of ours, with the same ids.

    Reads `tokenizer.json` (byte-level BPE, or a char/word tokenizer minigpt exported) or,
    failing that, GPT-2's `vocab.json` + `merges.txt`.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    path = hf_dir / "tokenizer.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            model = raw["model"]
            if not isinstance(model, dict):
                raise TypeError
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise HFError(f"{path} is not a readable Hugging Face tokenizer file.") from None
        parts = _pre_tokenizer_parts(raw.get("pre_tokenizer"))
        if model.get("type") == "WordLevel" and len(parts) == 1 and \
                parts[0].get("type") == "Split":
            tok = _wordlevel_to_ours(model.get("vocab") or {}, _split_pattern(parts[0]), path)
        elif model.get("type") == "BPE" and any(p.get("type") == "ByteLevel" for p in parts):
            pp = raw.get("post_processor") or {}
            noop = [{"Sequence": {"id": "A", "type_id": 0}}]
            if isinstance(pp, dict) and pp.get("type") == "TemplateProcessing" and \
                    pp.get("single") == noop:
                raw["post_processor"] = None  # transformers' no-op template: drop it
            try:
                tok = BPETokenizer(HFTokenizer.from_str(json.dumps(raw)))
            except Exception as e:  # noqa: BLE001 (the Rust side raises plain Exceptions)
                raise HFError(f"{path} cannot be loaded by the tokenizers library ({e}).") from None
        else:
            raise HFError(f"{path} holds a {model.get('type')} tokenizer; minigpt imports "
                          "byte-level BPE tokenizers and the char/word tokenizers it exports.")
    elif (hf_dir / "vocab.json").is_file() and (hf_dir / "merges.txt").is_file():
        try:
            hf = HFTokenizer(models.BPE.from_file(str(hf_dir / "vocab.json"),
                                                  str(hf_dir / "merges.txt")))
        except Exception as e:  # noqa: BLE001 (the Rust side raises plain Exceptions)
            raise HFError(f"{hf_dir}'s vocab.json and merges.txt are not a BPE tokenizer ({e})."
                          ) from None
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        for special in (GPT2_EOS, PAD, EOS):
            if hf.token_to_id(special) is not None:
                hf.add_special_tokens([special])
        tok = BPETokenizer(hf)
    else:
        raise HFError(f"{hf_dir} has no tokenizer.json (or vocab.json and merges.txt); minigpt "
                      "needs the model's tokenizer to import it.")
    if isinstance(tok, BPETokenizer):
        tok = _fit_bpe(tok, vocab_size, path)
    if tok.vocab_size != vocab_size:
        raise HFError(f"the tokenizer has {tok.vocab_size} tokens but the model has "
                      f"{vocab_size}; they do not belong together.")
    return tok


def _wordlevel_to_ours(vocab: Any, pattern: str | None, path: Path) -> Tokenizer:
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise HFError(f"{path} has a malformed WordLevel vocabulary.")
    itos = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if sorted(vocab.values()) != list(range(len(itos))):
        raise HFError(f"{path}'s vocabulary ids are not contiguous; it was not exported by "
                      "minigpt.")
    if pattern == CHAR_SPLIT and itos and itos[-1] == PAD and \
            all(len(c) == 1 for c in itos[:-1]):
        return CharTokenizer(itos[:-1])
    specials = WordTokenizer.specials
    if pattern == WORD_RE.pattern and itos[: len(specials)] == specials:
        tok = WordTokenizer(itos[len(specials):])
        if tok.itos == itos:
            return tok
    raise HFError(f"{path} holds a WordLevel tokenizer that minigpt did not export; minigpt "
                  "imports byte-level BPE tokenizers and its own char/word tokenizers.")


def _fit_bpe(tok: BPETokenizer, vocab_size: int, path: Path) -> BPETokenizer:
    """Check a BPE tokenizer adds nothing on encode; give it a <pad> and fill a padded vocab.

    Added tokens take the next free ids, so existing ids never change.
    """
    hf = tok.hf
    probe = "Hello world"
    if hf.encode(probe).ids != hf.encode(probe, add_special_tokens=False).ids:
        raise HFError(f"{path} adds special tokens to every text (a BOS/EOS template); "
                      "minigpt's bpe tokenizer encodes text only.")
    if hf.get_vocab_size() > vocab_size:
        raise HFError(f"the tokenizer has {hf.get_vocab_size()} tokens but the model only "
                      f"{vocab_size}; they do not belong together.")
    if hf.token_to_id(PAD) is None and hf.get_vocab_size() < vocab_size:
        hf.add_special_tokens([PAD])
    missing = vocab_size - hf.get_vocab_size()
    if missing > 0:  # e.g. GPT-2 vocabularies padded to a multiple of 64
        hf.add_special_tokens([f"<|unused_{i}|>" for i in range(missing)])
    return BPETokenizer(hf)


# --- configs -----------------------------------------------------------------------------------

def hf_config_kwargs(cfg: ModelConfig, ids: dict[str, int | None]) -> tuple[str, dict[str, Any]]:
    """Our ModelConfig -> (HF config class name, its keyword arguments)."""
    common = {"vocab_size": cfg.vocab_size, "bos_token_id": ids["bos"],
              "eos_token_id": ids["eos"], "pad_token_id": ids["pad"], "tie_word_embeddings": True}
    if cfg.pos == "learned":
        return "GPT2Config", dict(
            common, n_positions=cfg.block_size, n_embd=cfg.d_model, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=cfg.d_ff, activation_function=HF_ACT[cfg.activation],
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            layer_norm_epsilon=cfg.layer_norm_eps, scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
    return "GPTNeoXConfig", dict(
        common, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.d_ff,
        hidden_act=HF_ACT[cfg.activation], layer_norm_eps=cfg.layer_norm_eps,
        use_parallel_residual=False, rotary_pct=1.0, attention_bias=True,
        hidden_dropout=cfg.dropout, attention_dropout=cfg.dropout, **hf_rope(cfg))


# our rope_scaling -> transformers' rope_type; ntk has none and is written as its base
HF_ROPE_TYPES = {"linear": "linear", "dynamic": "dynamic", "yarn": "yarn", "llama3": "llama3"}
NTK_NOTE = "minigpt_rope"  # config.json key that lets an exported ntk model import as ntk


def hf_rope(cfg: ModelConfig) -> dict[str, Any]:
    """GPTNeoXConfig keywords for our rope settings: the base, max_position_embeddings and,
    for a context-extension method, `rope_scaling` (transformers' rope_parameters); refuses
    a method transformers cannot compute."""
    from .positional import (LLAMA3_HIGH_FREQ_FACTOR, LLAMA3_LOW_FREQ_FACTOR, YARN_BETA_FAST,
                             YARN_BETA_SLOW, ntk_base)

    method, s, L = cfg.rope_scaling, cfg.rope_factor, cfg.rope_original_length
    out: dict[str, Any] = {"rotary_emb_base": cfg.rope_base,
                           "max_position_embeddings": cfg.block_size}
    if method == "none":
        return out
    if method == "ntk":  # static NTK-aware scaling is plain rope with a larger base
        return {**out, "rotary_emb_base": ntk_base(cfg.rope_base, s, cfg.head_size)}
    if method not in HF_ROPE_TYPES or not _hf_has_rope_type(HF_ROPE_TYPES[method]):
        raise HFError(f"rope_scaling {method} cannot be exported: this transformers version "
                      "has no rope type that computes it.")
    rope: dict[str, Any] = {"rope_type": HF_ROPE_TYPES[method], "factor": s}
    if method == "dynamic":  # transformers scales from max_position_embeddings
        out["max_position_embeddings"] = L
    if method == "yarn":
        rope.update(original_max_position_embeddings=L, beta_fast=YARN_BETA_FAST,
                    beta_slow=YARN_BETA_SLOW)
    if method == "llama3":
        rope.update(original_max_position_embeddings=L, low_freq_factor=LLAMA3_LOW_FREQ_FACTOR,
                    high_freq_factor=LLAMA3_HIGH_FREQ_FACTOR)
    return {**out, "rope_scaling": rope}


def _hf_has_rope_type(rope_type: str) -> bool:
    try:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except ImportError:
        return False
    return rope_type in ROPE_INIT_FUNCTIONS


def _get(raw: dict, key: str, default: Any, kind: type | tuple = (int, float)) -> Any:
    """A numeric config.json field (absent or null -> HF's default for it)."""
    v = raw.get(key, default)
    if v is None:
        v = default
    if not isinstance(v, kind) or isinstance(v, bool):
        raise HFError(f"config.json: {key} has an unexpected value {v!r}.")
    return v


def model_config_from_hf(raw: dict[str, Any], where: Path) -> tuple[str, ModelConfig]:
    """A HF config.json (as a dict) -> (model_type, our ModelConfig), or a clear refusal."""
    mtype = _importable_type(raw, where)
    settings = _gpt2_settings if mtype == "gpt2" else _neox_settings
    kw, act = settings(raw, where)
    if act not in FROM_HF_ACT:
        raise HFError(f"{where} uses the activation {act!r}; minigpt supports "
                      f"{', '.join(sorted(FROM_HF_ACT))}.")
    kw["activation"] = FROM_HF_ACT[act]
    if not 0.0 <= kw["dropout"] < 1.0:
        kw["dropout"] = 0.0
    try:
        return mtype, ModelConfig(**kw)
    except MiniGPTError as e:
        raise HFError(f"{where}'s config.json describes a model minigpt cannot build: {e}"
                      ) from None


def _importable_type(raw: dict[str, Any], where: Path) -> str:
    """The config's model_type, if minigpt imports it (GPT-2, GPT-NeoX) as a causal LM."""
    mtype = raw.get("model_type")
    if raw.get("format") == "minigpt-checkpoint":
        raise HFError(f"{where} is already a minigpt checkpoint; use it directly (sample, "
                      "train --init-from) or export it with minigpt export.")
    if not isinstance(mtype, str):
        raise HFError(f"{where}'s config.json has no model_type, so it is not a transformers "
                      "model directory.")
    if mtype not in IMPORTABLE:
        names = ", ".join(raw.get("architectures") or []) or str(mtype)
        raise HFError(f"{where} holds a {names} model; minigpt imports only GPT-2 "
                      "(GPT2LMHeadModel) and GPT-NeoX (GPTNeoXForCausalLM) models.")
    archs = raw.get("architectures") or []
    if archs and not set(archs) & ACCEPTED[mtype]:
        raise HFError(f"{where} holds a {', '.join(archs)}; minigpt imports the causal language "
                      f"model {IMPORTABLE[mtype]}.")
    return mtype


def _gpt2_settings(raw: dict[str, Any], where: Path) -> tuple[dict[str, Any], Any]:
    """ModelConfig keywords and the HF activation name of a GPT-2 config."""
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if raw.get(key, want) != want:
            raise HFError(f"{where} sets {key}={raw.get(key)}; minigpt's attention needs "
                          f"{key}={want}.")
    act = raw.get("activation_function", "gelu_new")
    d_model = _get(raw, "n_embd", 768, int)
    kw = {"block_size": _get(raw, "n_positions", 1024, int),
          "n_layer": _get(raw, "n_layer", 12, int), "n_head": _get(raw, "n_head", 12, int),
          "d_model": d_model, "d_ff": _get(raw, "n_inner", 4 * d_model, int),
          "dropout": float(_get(raw, "resid_pdrop", 0.1)),
          "layer_norm_eps": float(_get(raw, "layer_norm_epsilon", 1e-5)), "pos": "learned",
          "vocab_size": _get(raw, "vocab_size", 50257, int)}
    return kw, act


def _neox_settings(raw: dict[str, Any], where: Path) -> tuple[dict[str, Any], Any]:
    """ModelConfig keywords and the HF activation name of a GPT-NeoX config (sequential
    blocks, plain rope over whole heads only)."""
    if raw.get("use_parallel_residual", True):
        raise HFError(f"{where} uses GPT-NeoX's parallel residual (attention and MLP side by "
                      "side, as Pythia); minigpt's blocks are sequential, so it cannot be "
                      "imported.")
    rope = _neox_rope(raw, where)
    act = raw.get("hidden_act", "gelu")
    block = _get(raw, "max_position_embeddings", 2048, int)
    kw = {"block_size": max(block, rope.get("rope_original_length", 0)),
          "n_layer": _get(raw, "num_hidden_layers", 44, int),
          "n_head": _get(raw, "num_attention_heads", 64, int),
          "d_model": _get(raw, "hidden_size", 6144, int),
          "d_ff": _get(raw, "intermediate_size", 24576, int),
          "dropout": float(_get(raw, "hidden_dropout", 0.0)),
          "layer_norm_eps": float(_get(raw, "layer_norm_eps", 1e-5)), "pos": "rope",
          "vocab_size": _get(raw, "vocab_size", 50432, int), **rope}
    if kw.get("rope_scaling") == "dynamic":  # transformers scales from max_position_embeddings
        kw["rope_original_length"] = block
    return kw, act


def _neox_rope(raw: dict[str, Any], where: Path) -> dict[str, Any]:
    """Our rope settings of a GPT-NeoX config: the base and, for the rope types minigpt
    computes (linear, dynamic, yarn with beta 32/1 and its own attention factor, llama3 with
    frequency factors 1/4), the method; refuses others and partial rotary embeddings."""
    from .positional import (LLAMA3_HIGH_FREQ_FACTOR, LLAMA3_LOW_FREQ_FACTOR, YARN_BETA_FAST,
                             YARN_BETA_SLOW, ntk_base, yarn_attention_factor)

    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise HFError(f"config.json in {where}: rope_parameters must be an object.")
    rtype = rope.get("rope_type", rope.get("type", "default")) or "default"
    pct = rope.get("partial_rotary_factor", raw.get("partial_rotary_factor",
                                                    raw.get("rotary_pct", 0.25)))
    if pct != 1.0:
        raise HFError(f"{where} rotates only a fraction ({pct}) of each head; minigpt's rope "
                      "rotates the whole head (rotary_pct 1.0).")
    base = rope.get("rope_theta", raw.get("rope_theta", raw.get("rotary_emb_base", 10000.0)))
    if not isinstance(base, (int, float)) or isinstance(base, bool):
        raise HFError(f"config.json in {where}: rope_theta has an unexpected value {base!r}.")
    out: dict[str, Any] = {"rope_base": float(base)}
    ours = {v: k for k, v in HF_ROPE_TYPES.items()}
    if rtype == "default":
        note = raw.get(NTK_NOTE)
        if isinstance(note, dict) and note.get("rope_scaling") == "ntk":
            b, s = note.get("rope_base"), note.get("rope_factor")
            hs = _get(raw, "hidden_size", 6144, int) // _get(raw, "num_attention_heads", 64, int)
            if _is_num(b) and _is_num(s) and s >= 1 and hs > 2 and \
                    math.isclose(ntk_base(b, s, hs), base, rel_tol=1e-12):
                return {"rope_base": float(b), "rope_scaling": "ntk", "rope_factor": float(s)}
        return out
    if rtype not in ours:
        raise HFError(f"{where} uses {rtype!r} rope scaling; minigpt computes "
                      f"{', '.join(ours)} (and plain rope).")
    s = rope.get("factor")
    if not _is_num(s) or s < 1:
        raise HFError(f"config.json in {where}: the rope factor {s!r} is not a number of 1 "
                      "or more.")
    out.update(rope_scaling=ours[rtype], rope_factor=float(s))
    wants = {"yarn": {"beta_fast": YARN_BETA_FAST, "beta_slow": YARN_BETA_SLOW,
                      "attention_factor": yarn_attention_factor(s), "truncate": True},
             "llama3": {"low_freq_factor": LLAMA3_LOW_FREQ_FACTOR,
                        "high_freq_factor": LLAMA3_HIGH_FREQ_FACTOR}}.get(rtype, {})
    for key, want in wants.items():
        got = rope.get(key)
        if got is not None and got != want:
            raise HFError(f"{where} sets {rtype} {key} {got!r}; minigpt's {rtype} uses {want}.")
    if rtype == "llama3" and rope.get("low_freq_factor") is None:
        raise HFError(f"config.json in {where}: llama3 rope scaling needs low_freq_factor.")
    if rtype == "yarn" and (rope.get("mscale") or rope.get("mscale_all_dim")):
        raise HFError(f"{where} sets yarn mscale; minigpt's yarn uses the paper's attention "
                      "factor 0.1 ln(s) + 1.")
    if rtype in ("yarn", "llama3"):
        orig = rope.get("original_max_position_embeddings",
                        raw.get("original_max_position_embeddings"))
        if not isinstance(orig, int) or isinstance(orig, bool) or orig < 1:
            raise HFError(f"config.json in {where}: {rtype} rope scaling needs "
                          "original_max_position_embeddings.")
        out["rope_original_length"] = orig
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --- reading HF weights (safetensors only) ------------------------------------------------------

def _weight_files(hf_dir: Path) -> list[Path]:
    single = hf_dir / "model.safetensors"
    if single.is_file():
        return [single]
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
                AttributeError):
            raise HFError(f"{index} is not a readable safetensors index.") from None
        files = [hf_dir / n for n in names]
        if any(Path(n).name != n or not f.is_file() for n, f in zip(names, files)):
            raise HFError(f"{index} names shard files that are not in {hf_dir}.")
        return files
    if any(hf_dir.glob("pytorch_model*.bin")) or (hf_dir / "tf_model.h5").exists():
        raise HFError(f"{hf_dir} has weights only as pickle (pytorch_model.bin) or TF files; "
                      "minigpt reads safetensors only: re-save it with "
                      "save_pretrained(dir, safe_serialization=True).")
    raise HFError(f"{hf_dir} has no model.safetensors; it is not a complete model directory.")


def _read_hf_tensors(files: list[Path], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors files, with the HF model prefix removed from names."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), "pt") as st:
                for k in list(st.keys()):
                    name = k
                    for p in prefixes:
                        if name.startswith(p):
                            name = name[len(p):]
                            break
                    out[name] = st.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise HFError(f"{f} is corrupt or truncated ({e}).") from None
    return out


def _check_tied(tensors: dict[str, torch.Tensor], emb: str, where: Path) -> None:
    for head in ("lm_head.weight", "embed_out.weight"):
        t = tensors.get(head)
        if t is not None and (t.shape != tensors[emb].shape or not torch.equal(t, tensors[emb])):
            raise HFError(f"{where} has an output matrix separate from its token embedding; "
                          "minigpt ties the two, so it cannot import this model exactly.")


# --- the two directions -------------------------------------------------------------------------

@dataclass
class ExportResult:
    out: Path
    architecture: str
    max_abs_diff: float  # largest logit difference found by the self-check
    max_tokens: int | None = None  # the longest sequence transformers can run; None: no limit

    @property
    def note(self) -> str | None:
        """What a user of the exported model must know about its length, in one line."""
        if self.max_tokens is None:
            return None
        return (f"note: this learned-position model takes at most {self.max_tokens} tokens in "
                f"transformers (prompt + max_new_tokens <= {self.max_tokens}; past that "
                "generate() fails); minigpt sample slides its window instead.")


@dataclass
class ImportResult:
    out: Path
    architecture: str
    tokenizer: str
    params: int


def _check_out(out: Path, what: str) -> None:
    if out.exists() and not out.is_dir():
        raise HFError(f"--out {out} is a file; choose a directory.")
    if (out / "config.json").exists() or (out / "model.safetensors").exists():
        raise HFError(f"{out} already holds {what}; choose another --out (nothing is "
                      "overwritten).")


def refuse_unexportable(cfg: ModelConfig) -> None:
    if cfg.random_positions:
        raise HFError("a model trained with random_positions cannot be exported to Hugging "
                      "Face: transformers numbers positions 0..n-1 and has no randomized "
                      "positions.")
    if export_architecture(cfg.pos) is None:
        from .positional import REGISTRY

        ok = [f"{n!r} (as {c.hf_architecture})" for n, c in REGISTRY.items() if c.hf_architecture]
        raise HFError(f"a model with the {cfg.pos!r} encoding cannot be exported to Hugging "
                      f"Face: only the {' and '.join(ok)} encodings have an exact "
                      "transformers equivalent.")


def build_hf_model(model: Any, tok: Tokenizer) -> Any:
    """Our GPT (+ tokenizer for the special ids) -> an equivalent transformers model, eval."""
    transformers = require_transformers()
    cfg = model.cfg
    refuse_unexportable(cfg)
    cls_name, kw = hf_config_kwargs(cfg, special_ids(tok))
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # llama3 zero-shot: original == max length
    try:
        hf_cfg = getattr(transformers, cls_name)(**kw)
    finally:
        transformers.logging.set_verbosity(verbosity)
    hf_model = getattr(transformers, export_architecture(cfg.pos))(hf_cfg)
    from .checkpoint import model_state

    state = to_hf_state({k: v.cpu() for k, v in model_state(model).items()}, cfg)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith(".attn.bias")
               and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise HFError(f"this transformers version names the weights differently (missing "
                      f"{missing[:2]}, unexpected {unexpected[:2]}); export cannot continue.")
    hf_model.tie_weights()
    return hf_model.eval()


@torch.no_grad()
def compare_logits(model: Any, hf_model: Any, T: int = 16, seed: int = 0,
                   limit: int | None = None) -> tuple[float, float]:
    """(largest |ours - theirs|, largest |ours|) logit on two random sequences of T tokens
    (at most `limit`, default block_size)."""
    g = torch.Generator().manual_seed(seed)
    T = min(T, limit or model.cfg.block_size)
    ids = torch.randint(0, model.cfg.vocab_size, (2, T), generator=g)
    ours, _ = model.cpu().eval()(ids)
    theirs = hf_model(input_ids=ids).logits
    return float((ours - theirs).abs().max()), float(ours.abs().max())


def _update_json(path: Path, updates: dict[str, Any]) -> None:
    from .files import atomic_write_json

    old = json.loads(path.read_text(encoding="utf-8"))
    atomic_write_json(path, {**old, **updates})


def export_hf(ckpt: str | Path, out: str | Path, which: str = "last",
              extension: dict[str, Any] | None = None) -> ExportResult:
    """Write checkpoint `ckpt` as a transformers model directory `out` (checked for equality),
    with a rope model's context-extension `extension` settings if given (checkpoint.load)."""
    from .checkpoint import extended, load, read_config

    out = Path(out)
    cfg, _ = read_config(ckpt)
    cfg = extended(cfg, extension)
    refuse_unexportable(cfg.model)  # before anything heavy is loaded
    if cfg.model.pos == "rope":
        hf_rope(cfg.model)  # a method transformers cannot compute is refused now
    _check_out(out, "a model")
    model, tok, cfg, _ = load(ckpt, which=which, extension=extension)  # bad ones refused before
    require_transformers()  # the (slow) transformers import
    hf_model = build_hf_model(model, tok)
    diff, scale = compare_logits(model, hf_model)
    if cfg.model.rope_scaling != "none":  # the method matters past the trained length
        past = 2 * cfg.model.block_size
        diff, scale = max((diff, scale), compare_logits(model, hf_model, past, limit=past))
    if diff > 1e-4 * max(1.0, scale):
        raise HFError(f"the exported model's logits differ from ours by {diff:.2g}; this "
                      "transformers version computes the architecture differently.")
    hf_tok = hf_tokenizer(tok, cfg.model.block_size if cfg.model.pos == "learned" else None)
    gen = hf_model.generation_config
    ids = special_ids(tok)
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    hf_logging = require_transformers().utils.logging
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one tiny file: no "Writing model shards" bar
    try:
        with staged_dir(out) as tmp:  # all files appear together, or none does
            hf_model.save_pretrained(str(tmp), safe_serialization=True)
            hf_tok.save_pretrained(str(tmp))
            # names that older transformers (4.x) read too: 4.x has no "TokenizersBackend",
            # and without rotary_pct it would silently rotate only a quarter of each head
            _update_json(tmp / "tokenizer_config.json",
                         {"tokenizer_class": "PreTrainedTokenizerFast"})
            if cfg.model.pos == "rope":
                m = cfg.model
                note = {NTK_NOTE: {"rope_scaling": "ntk", "rope_factor": m.rope_factor,
                                   "rope_base": m.rope_base}} if m.rope_scaling == "ntk" else {}
                _update_json(tmp / "config.json", {
                    "rotary_pct": 1.0, "rotary_emb_base": hf_rope(m)["rotary_emb_base"],
                    **note})
    except OSError as e:
        raise HFError(f"cannot write {out}: {e.strerror or e}.") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    from .positional import REGISTRY

    limit = None if REGISTRY[cfg.model.pos].extrapolates else cfg.model.block_size
    return ExportResult(out, export_architecture(cfg.model.pos), diff, limit)


def import_hf(src: str | Path, out: str | Path) -> ImportResult:
    """Turn a local GPT-2 / GPT-NeoX model directory into a minigpt checkpoint directory."""
    from .checkpoint import expected_shapes, save_weights, write_config
    from .model import GPT

    hf_dir, out = Path(src), Path(out)
    if not hf_dir.is_dir():
        raise HFError(f"{hf_dir} is not a directory; give a local Hugging Face model directory "
                      "(minigpt never downloads).")
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise HFError(f"{hf_dir} has no config.json, so it is not a Hugging Face model directory.")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise HFError(f"{cfg_path} is not readable JSON.") from None
    if not isinstance(raw, dict):
        raise HFError(f"{cfg_path} is not a Hugging Face model config.")
    arch, mcfg = model_config_from_hf(raw, hf_dir)
    _check_out(out, "a run")
    files = _weight_files(hf_dir)  # refuse pickle-only directories before anything else
    tok = tokenizer_from_hf_dir(hf_dir, mcfg.vocab_size)
    prefixes = ("transformer.",) if arch == "gpt2" else ("gpt_neox.",)
    tensors = _read_hf_tensors(files, prefixes)
    emb = "wte.weight" if arch == "gpt2" else "embed_in.weight"
    if emb not in tensors:
        raise HFError(f"{hf_dir}'s weights have no {emb}; the directory is incomplete.")
    _check_tied(tensors, emb, hf_dir)
    try:
        state = from_hf_state(tensors, mcfg, arch)
    except (RuntimeError, ValueError, IndexError):  # a transpose or reshape of a wrong shape
        raise HFError(f"{hf_dir}'s weights do not have the shapes its config.json implies."
                      ) from None
    # shapes checked on the meta device: nothing is allocated for a config that lies
    want = expected_shapes(RunConfig(model=mcfg))
    for k, shape in want.items():
        if k not in state:
            raise HFError(f"{hf_dir}'s weights lack a tensor for {k}; the directory is incomplete.")
        if tuple(state[k].shape) != shape:
            raise HFError(f"{hf_dir}: tensor for {k} has shape {list(state[k].shape)} but its "
                          f"config.json implies {list(shape)}.")
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise HFError(f"{hf_dir}'s weights hold NaN or infinite values.")
    model = GPT(mcfg, init=False)
    model.load_state_dict(state, strict=False)
    train = TrainConfig(tokenizer=tok.kind,
                        vocab_size_bpe=max(260, tok.vocab_size) if tok.kind == "bpe" else 512)
    run = RunConfig(model=mcfg, train=train)
    with staged_dir(out) as tmp:  # a complete checkpoint appears, or nothing
        tok.save(tmp / "tokenizer.json")
        save_weights(tmp / "model.safetensors", model, step=0)
        write_config(tmp, run, 0, extra={"imported_from": {
            "format": "hf", "path": str(hf_dir.resolve()), "architecture": IMPORTABLE[arch]}})
    return ImportResult(out, IMPORTABLE[arch], tok.kind, model.num_params())
