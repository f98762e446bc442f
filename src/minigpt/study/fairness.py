"""What a fair comparison holds equal, checked and written down: the run configs differ only in
the encoding (and seed), and every parameter the encodings share starts identical."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..text import plural
from .settings import Study, config_diff


def verify_shared_init(study: Study, vocab_size: int) -> dict[str, Any]:
    """Build every encoding's model for every seed and check that the parameters they share
    start identical; also check that run configs differ only in pos (and seed). The
    variants of the rope runs (--extend) differ from them on purpose, and are not trained
    from scratch: they are left out here."""
    import torch

    from ..model import GPT

    configs = {(p, s): study.run_config(p, s) for p in study.encodings for s in study.seeds}
    differ: set[str] = set()
    ref = next(iter(configs.values()))
    for cfg in configs.values():
        differ.update(d.split(":")[0] for d in config_diff(ref, cfg))
    unexpected = differ - {"model.pos", "train.seed"}
    if unexpected:  # a bug in run_config, never a user error
        raise RuntimeError(f"run configs differ in {sorted(unexpected)}")
    identical, shared_n = True, 0
    for seed in study.seeds:
        params = []
        for pos in study.encodings:
            cfg = dataclasses.replace(configs[(pos, seed)].model, vocab_size=vocab_size)
            params.append(dict(GPT(cfg, seed=seed).named_parameters()))
        shared = set.intersection(*(set(p) for p in params))
        shared_n = len(shared)
        for name in shared:
            identical &= all(torch.equal(params[0][name], p[name]) for p in params[1:])
    return {"configs_differ_only_in": sorted(differ), "shared_init_identical": identical,
            "shared_tensors": shared_n, "seeds_checked": list(study.seeds)}


def held_equal(study: Study, vocab: int, verification: dict[str, Any], jobs: int) -> list[str]:
    from ..positional import REGISTRY

    m, t = study.base.model, study.base.train
    differ = ", ".join(verification["configs_differ_only_in"]) or "nothing"
    lines = [
        (f"Configuration: the same model shapes for every run ({plural(m.n_layer, 'layer')}, "
         f"{plural(m.n_head, 'head')}, d_model {m.d_model}, d_ff {m.d_ff}, "
         f"trained context L = {m.block_size}); "
         f"the run configs differ only in {differ} (checked)."),
        *study.objective.held_equal(study, vocab)[:1],
        (f"Hyper-parameters: AdamW (betas {t.beta1}, {t.beta2}, weight decay {t.weight_decay}), "
         f"lr {t.lr} -> {t.min_lr} with {t.warmup_steps} warm-up steps, clipping {t.grad_clip}, "
         f"batch {t.batch_size}x{t.grad_accum}, at most {t.max_steps} steps, dropout "
         f"{m.dropout}; one learning rate for every encoding (not tuned per encoding)."),
        ("Training batches: the same rows in the same order for a given seed (batches are a "
         "pure function of seed and step and never depend on the model); the dropout stream is "
         "seeded after the model is built, so it is the same for every encoding."),
        ("Initial values: every parameter the encodings share (token embedding, attention, MLP, "
         "LayerNorms) is drawn per parameter name from its own seeded generator; verified "
         f"identical across encodings for {verification['shared_tensors']} shared tensors and "
         f"seed(s) {', '.join(map(str, verification['seeds_checked']))}: "
         f"{'yes' if verification['shared_init_identical'] else 'NO'}."),
        *study.objective.held_equal(study, vocab)[1:],
    ]
    notes = (REGISTRY[name].settings_note(m) for name in REGISTRY if name in study.encodings)
    lines += [note for note in notes if note]
    if m.random_positions:
        lines.append(f"Randomized positions (Ruoss et al. 2023) for every encoding: in training "
                     f"each sequence reads a sorted random sample of positions from [0, "
                     f"{m.random_positions}), at evaluation one fixed sample per length.")
    share = (f"{jobs} runs at a time, each in its own process with its share of the threads, "
             "so step times come from runs that shared the machine the same way"
             if jobs > 1 else "one run at a time")
    lines.append(f"Machine: the same device and thread count for every run, {share}; the run "
                 "order rotates by one encoding per seed.")
    return lines
