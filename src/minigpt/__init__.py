"""minigpt: train small GPTs from scratch and measure what positional encodings change.

The public API, usable from a notebook as well as from the `minigpt` command:

    from minigpt import RunConfig, preset, train, load, generate, sample_text
    cfg = preset("tiny")
    result = train(cfg, out="runs/tiny")
    model, tok, cfg, _ = load("runs/tiny")
    print(sample_text(model, tok, "ROMEO:", max_new_tokens=100)[0])
"""

from .version import __version__  # noqa: F401
from .config import ModelConfig, RunConfig, SamplingSettings, TrainConfig, preset  # noqa: E402
from .errors import MiniGPTError  # noqa: E402

__all__ = ["ModelConfig", "RunConfig", "TrainConfig", "SamplingSettings", "preset", "MiniGPTError",
           "GPT", "train", "load", "generate", "sample_text", "stream_text", "prepare",
           "load_tokenizer"]


def __getattr__(name: str):  # lazy: importing minigpt stays cheap
    if name == "GPT":
        from .model import GPT
        return GPT
    if name == "train":
        from .training import train
        return train
    if name == "load":
        from .checkpoint import load
        return load
    if name in ("generate", "sample_text", "stream_text"):
        from . import generation
        return getattr(generation, name)
    if name == "prepare":
        from .data import prepare
        return prepare
    if name == "load_tokenizer":
        from .tokenizers import load_tokenizer
        return load_tokenizer
    raise AttributeError(name)
