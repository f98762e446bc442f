"""`minigpt viz`: every encoding gives real, non-blank pictures; mistakes are one-line errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_TEXT, run_cli, tiny_config

from minigpt import viz
from minigpt.cli import main
from minigpt.errors import MiniGPTError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_picture(path: Path) -> None:
    """A valid PNG of at least 300 x 300 px that shows more than a title on white."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 300, (path, width, height)

    import matplotlib.image

    rgb = matplotlib.image.imread(path)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert rgb.std() > 0.05, f"{path} is nearly uniform"
    coloured = rgb[(rgb.max(-1) - rgb.min(-1)) > 0.15]  # not white, grey or black text
    distinct = np.unique((coloured * 255).astype(np.uint8), axis=0)
    assert len(distinct) > 20, f"{path} has only {len(distinct)} colours: blank?"


@pytest.fixture(autouse=True)
def _quick_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process drawings at a lower resolution (still >= 300 px a side) to save time; the
    command-line test renders at the real one."""
    monkeypatch.setattr(viz, "DPI", 72)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two checkpoints trained for a couple of steps: learned and t5 positions."""
    from minigpt.training import train

    root = tmp_path_factory.mktemp("viz")
    corpus = root / "corpus.txt"
    corpus.write_text(SMALL_TEXT * 24, encoding="utf-8")
    out = {}
    for pos in ("learned", "t5"):
        cfg = tiny_config(corpus, model={"pos": pos}, train={"max_steps": 2, "eval_interval": 2})
        train(cfg, root / pos, progress=False, log=lambda *a, **k: None)
        out[pos] = root / pos
    return out


# --- pictures of each encoding ------------------------------------------------------------

@pytest.mark.parametrize("pos, names", [
    ("sinusoidal", ["sinusoidal_table.png", "sinusoidal_similarity.png"]),
    ("rope", ["rope_distance.png", "rope_frequencies.png"]),
    ("alibi", ["alibi_bias.png", "alibi_bias_distance.png"]),
])
def test_untrained_encodings(tmp_path: Path, pos: str, names: list[str]) -> None:
    paths = viz.draw(pos, None, tmp_path / "pics", overrides={"block_size": 32})
    assert [p.name for p in paths] == names
    for p in paths:
        assert p.parent == tmp_path / "pics"
        assert_picture(p)


def test_alibi_with_a_head_count_that_is_not_a_power_of_two(tmp_path: Path) -> None:
    paths = viz.draw("alibi", None, tmp_path, overrides={"n_head": 6, "d_model": 48,
                                                          "block_size": 24})
    assert len(paths) == 2
    for p in paths:
        assert_picture(p)


def test_learned_from_a_checkpoint_with_attention_maps(ckpts, tmp_path: Path) -> None:
    # --pos is taken from the checkpoint; the prompt adds one picture per layer (2 layers)
    paths = viz.draw(None, ckpts["learned"], tmp_path, prompt="ALL:\nSpeak.")
    assert [p.name for p in paths] == ["learned_table.png", "learned_similarity.png",
                                       "learned_attention_layer0.png",
                                       "learned_attention_layer1.png"]
    for p in paths:
        assert_picture(p)


def test_titles_name_the_encoding_and_where_it_came_from(ckpts, tmp_path, monkeypatch) -> None:
    titles: list[str] = []

    def record(fig, path):  # keep the titles, skip the (slow) rendering
        texts = [fig._suptitle.get_text()] if fig._suptitle else []
        titles.append(" ".join(texts + [ax.get_title() for ax in fig.axes]))
        viz.plt.close(fig)
        return path

    monkeypatch.setattr(viz, "_save", record)
    viz.draw("rope", None, tmp_path, overrides={"block_size": 16}, preset_name="tiny")
    viz.draw("t5", ckpts["t5"], tmp_path, prompt="ALL:")
    assert len(titles) == 6
    for t in titles[:2]:
        assert "rope" in t and "untrained, preset tiny, block_size 16" in t
    for t in titles[2:]:
        assert "t5" in t and f"checkpoint {ckpts['t5']}" in t and "(step 2)" in t


def test_rope_score_is_one_at_distance_zero_and_follows_the_frequencies() -> None:
    from minigpt.config import ModelConfig
    from minigpt.positional import build

    rope = build(ModelConfig(pos="rope", n_head=2, d_model=16, block_size=8))
    s = viz.rope_scores(rope, torch.ones(1, 8), 20)[0]  # (21,)
    d = torch.arange(21, dtype=torch.float32)
    expected = torch.cos(d[:, None] * rope.inv_freq[None, :]).mean(-1)  # 4 pairs, equal weight
    assert s[0].item() == pytest.approx(1.0)
    torch.testing.assert_close(s, expected, atol=1e-5, rtol=1e-5)


def test_nope_has_nothing_to_draw(tmp_path: Path) -> None:
    notes: list[str] = []
    assert viz.draw("nope", None, tmp_path, log=notes.append) == []
    assert len(notes) == 1 and "nothing" in notes[0]


# --- prompts ---------------------------------------------------------------------------

def test_prompt_with_unknown_characters_is_a_user_error(ckpts, tmp_path: Path) -> None:
    with pytest.raises(MiniGPTError, match="does not know"):
        viz.draw(None, ckpts["learned"], tmp_path, prompt="ALL: 😀")


def test_learned_prompt_longer_than_the_context_is_a_user_error(ckpts, tmp_path) -> None:
    with pytest.raises(MiniGPTError, match="shorter prompt"):
        viz.draw(None, ckpts["learned"], tmp_path, prompt="Speak, speak. " * 3)  # 42 > 16


# --- the command line ---------------------------------------------------------------------

def test_cli_t5_checkpoint_prints_the_paths_and_exits_0(ckpts, tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"  # created if missing
    r = run_cli("viz", "--pos", "t5", "--ckpt", ckpts["t5"], "--out", out)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [Path(line).name for line in lines] == ["t5_bias.png", "t5_bias_distance.png"]
    for line in lines:
        assert Path(line).parent == out
        assert_picture(Path(line))


def test_cli_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = run_cli("viz", "--pos", "learned", "--out", tmp_path / "pics")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "--ckpt" in r.stderr, r.stderr
    assert not (tmp_path / "pics").exists()


# the same path as above (cli.main), in-process to keep the suite fast
@pytest.mark.parametrize("args, words", [
    (["--pos", "sideways"], "invalid choice: 'sideways'"),
    (["--ckpt", "no/such/dir"], "does not exist"),
    (["--pos", "rope", "--ckpt", "{learned}"], "does not match"),
    (["--pos", "t5"], "--ckpt"),
    (["--ckpt", "{learned}", "--block-size", "8"], "not to a checkpoint"),
    (["--pos", "rope", "--prompt", "hi"], "--ckpt"),
    ([], "--pos NAME"),
])
def test_cli_user_errors_exit_2_with_one_line(ckpts, tmp_path, capsys, args, words) -> None:
    args = [a.format(learned=ckpts["learned"]) for a in args]
    try:
        code = main(["viz", *args, "--out", str(tmp_path / "pics")])
    except SystemExit as e:  # argparse's own refusals (an unknown choice) exit from the parser
        code = e.code
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and words in captured.err, captured.err
    assert captured.err.startswith("minigpt viz: error: ")
    assert not (tmp_path / "pics").exists()


def test_cli_nope_says_so_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["viz", "--pos", "nope", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "nope" in out


def test_sinusoidal_colour_bar_shows_what_is_added(tmp_path: Path, monkeypatch) -> None:
    """The sinusoidal table's colours are scale x table, the value embed() adds, and the
    colour bar says so with the scale."""
    import torch

    from minigpt.config import merge, preset
    from minigpt.positional import build

    shown = []

    def record(fig, path):
        if path.name == "sinusoidal_table.png":
            im = fig.axes[0].images[0]
            shown.append((im.get_array().max(), im.get_clim(), fig.axes[1].get_ylabel()))
        viz.plt.close(fig)
        return path

    monkeypatch.setattr(viz, "_save", record)
    viz.draw("sinusoidal", None, tmp_path, overrides={"block_size": 32}, preset_name="tiny")
    (top, clim, label), = shown
    cfg = merge(preset("tiny"), {"block_size": 32, "pos": "sinusoidal"}, None).model
    pos = build(cfg)
    x = torch.zeros(1, 32, pos.cfg.d_model)
    added = pos.embed(x, torch.arange(32))  # (1, T, C): what the model adds
    assert abs(top - float(added.max())) < 1e-5
    assert clim[1] == pytest.approx(float(added.abs().max()), rel=1e-5)
    assert f"learned scale {pos.scale.item():.3g} x the sin/cos table" in label


def test_no_legend_hides_data(tmp_path: Path, monkeypatch) -> None:
    """Every legend viz and the training loss curve draw sits outside the plotted data:
    no line, band or scatter point, and no image, lies under it (issue 23, point 3)."""
    from minigpt import plots

    checked: dict[str, int] = {}
    real = plots.atomic_savefig

    def check(fig, path, **kw):
        if any(ax.get_legend() is not None for ax in fig.axes):
            checked[Path(path).name] = plots.points_under_legend(fig)
        return real(fig, path, **kw)

    monkeypatch.setattr(plots, "atomic_savefig", check)
    for pos in ("rope", "alibi"):
        viz.draw(pos, None, tmp_path / pos, overrides={"block_size": 32}, preset_name="tiny")
    rows = [{"step": s, "train_loss": 4 - s / 50} for s in range(1, 101)]
    rows += [{"step": s, "val_loss": 4.1 - s / 50} for s in range(10, 101, 10)]
    plots.loss_curve(rows, tmp_path / "loss.png")
    assert set(checked) == {"rope_distance.png", "rope_frequencies.png",
                            "alibi_bias_distance.png", "loss.png"}
    assert checked == dict.fromkeys(checked, 0)


def test_points_under_legend_counts_what_a_legend_hides() -> None:
    from minigpt import plots

    fig, ax = plots.plt.subplots()
    ax.plot(range(100), [50] * 100, label="flat line through the middle")
    ax.legend(loc="center")
    assert plots.points_under_legend(fig) > 0
    plots.legend_outside(ax)
    assert plots.points_under_legend(fig) == 0
    plots.plt.close(fig)
