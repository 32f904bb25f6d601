"""`seqmodel mask show`: draw the attention mask a pattern or a recipe produces.

Rows are queries, columns keys; modality bands are labelled. A recipe is shown on a real example
(the first validation batch of its task, one example); a bare pattern on a synthetic set whose
first third is segment 0 (so `prefix` and `segment` have something to show).
"""

from __future__ import annotations

from pathlib import Path

import torch

from seqmodel.masks import MaskSchedule, TokenView, dense_mask, parse_mask
from seqmodel.segments import TokenSet


def synthetic_view(length: int) -> tuple[TokenView, list[tuple[str, int, int]]]:
    index = torch.arange(length)[None]
    segment = (index >= max(1, length // 3)).long()
    zeros = torch.zeros_like(index)
    cut = max(1, length // 3)
    return TokenView(index, segment, segment, index, zeros, {}), [("A: segment 0", 0, cut), ("B: segment 1", cut, length)]


def set_view(ts: TokenSet, length: int | None) -> tuple[TokenView, list[tuple[str, int, int]], torch.Tensor]:
    """Metadata of the first example of a TokenSet, cut to `length` tokens, and its modality bands."""
    n = int(ts.valid[0].sum()) if length is None else min(length, int(ts.valid[0].sum()))
    codes = {m: i for i, m in enumerate(ts.modalities)}
    view = TokenView(torch.arange(n)[None], ts.segment[:1, :n], ts.doc[:1, :n], ts.time[:1, :n], ts.modality[:1, :n], codes)
    bands, start = [], 0
    mods = ts.modality[0, :n].tolist()
    for i in range(1, n + 1):
        if i == n or mods[i] != mods[start] or ts.segment[0, i] != ts.segment[0, start]:
            bands.append((ts.modalities[mods[start]], start, i))
            start = i
    return view, bands, ts.valid[:1, :n]


def text_grid(mask: torch.Tensor, bands: list[tuple[str, int, int]], limit: int = 64) -> str:
    """A small terminal picture: '#' may attend, '.' may not (first `limit` tokens)."""
    n = min(mask.shape[0], limit)
    label = {i: name[0] for name, a, b in bands for i in range(a, b)}
    lines = ["   " + "".join(label.get(j, " ") for j in range(n))]
    for i in range(n):
        lines.append(f"{label.get(i, ' ')}  " + "".join("#" if mask[i, j] else "." for j in range(n)))
    return "\n".join(lines)


def draw_png(masks: list[tuple[str, torch.Tensor]], bands, path: Path) -> None:
    from seqmodel.plots import figure

    with figure(path, grid=(1, len(masks)), size=(4.2 * len(masks), 4.4), dpi=120) as (fig, axes):
        for ax, (title, m) in zip(axes[0], masks):
            ax.imshow(m.numpy(), cmap="Blues", vmin=0, vmax=1.25, interpolation="nearest")
            for name, a, b in bands:
                for edge in (a - 0.5, b - 0.5):
                    ax.axhline(edge, color="tab:orange", lw=0.6)
                    ax.axvline(edge, color="tab:orange", lw=0.6)
                ax.text((a + b) / 2 - 0.5, 1.01, name, ha="center", va="bottom", fontsize=7, color="tab:orange",
                        transform=ax.get_xaxis_transform())
                ax.text(-0.07, (a + b) / 2 - 0.5, name, ha="right", va="center", fontsize=7, color="tab:orange",
                        rotation=90, transform=ax.get_yaxis_transform())
            ax.set_title(title, fontsize=9, pad=16)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
            ax.tick_params(labelsize=6)


def recipe_masks(path: str, overrides: list[str], length: int | None):
    """(title, mask) per distinct layer mask of a recipe's main stack, on a real example."""
    from seqmodel.recipe.schema import load_recipe
    from seqmodel.task import Slice
    from seqmodel.training.lifecycle import assemble

    pipe = assemble(load_recipe(path, overrides))
    recipe = pipe.recipe
    batch = pipe.task.batches("val", False).batch(Slice(0, 0, 0, 1, 1))
    view, bands, valid = set_view(batch, length)  # an encoder-decoder's batch is the decoder's set
    schedule = MaskSchedule.parse(recipe.model.mask, recipe.model.layer_masks, where=f"{path}: [model]")
    return schedule, view, bands, valid, recipe.model.layers


def show(target: str, length: int = 32, out: str | None = None, overrides: list[str] = ()) -> str:
    """Render `target` (a recipe path or a pattern string); returns the terminal picture."""
    if target.endswith(".toml"):
        schedule, view, bands, valid, n_layers = recipe_masks(target, list(overrides), length)
    else:
        schedule = MaskSchedule((parse_mask(target, "mask"),))
        view, bands = synthetic_view(length)
        valid = torch.ones(1, length, dtype=torch.bool)
        n_layers = 1
    layers: dict = {}
    for i in range(max(n_layers, len(schedule.masks))):
        layers.setdefault(schedule.for_layer(i), []).append(i)
    masks = [(f"{m}  (layers {', '.join(map(str, ls))})" if len(schedule.masks) > 1 else str(m),
              dense_mask(m, view, view, valid)[0, 0]) for m, ls in layers.items()]
    if out:
        draw_png(masks, bands, Path(out))
    return "\n\n".join(f"{title}\n{text_grid(m, bands)}" for title, m in masks)
