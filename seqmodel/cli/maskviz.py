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


def draw_png(panels: list[tuple[str, torch.Tensor, list]], path: Path) -> None:
    """One picture per (title, mask, modality bands)."""
    from seqmodel.plots import figure

    with figure(path, grid=(1, len(panels)), size=(4.2 * len(panels), 4.4), dpi=120) as (fig, axes):
        for ax, (title, m, bands) in zip(axes[0], panels):
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


def recipe_views(path: str, overrides: list[str], length: int | None) -> list[tuple[str, MaskSchedule, tuple, int]]:
    """(member name or "", mask schedule, (view, bands, valid) of a real example, layers) for a
    recipe, or for each member of a mixture."""
    from seqmodel.recipe.schema import load_recipe
    from seqmodel.task import Slice
    from seqmodel.training.lifecycle import assemble

    pipe = assemble(load_recipe(path, overrides))
    out = []
    for name, member in (pipe.members or {"": pipe}).items():
        model = member.recipe.model
        batch = member.task.batches("val", False).batch(Slice(0, 0, 0, 1, 1))
        where = f"{path}: [mixture.{name}]" if name else f"{path}: [model]"
        schedule = MaskSchedule.parse(model.mask, model.layer_masks, where=where)
        out.append((name, schedule, set_view(batch, length), model.layers))  # an encoder-decoder's: the decoder's set
    return out


def panels(name: str, schedule: MaskSchedule, view: TokenView, bands: list, valid: torch.Tensor, n_layers: int) -> list:
    """(title, dense mask, bands) per distinct mask of a schedule."""
    layers: dict = {}
    for i in range(max(n_layers, len(schedule.masks))):
        layers.setdefault(schedule.for_layer(i), []).append(i)
    prefix = f"{name}: " if name else ""
    return [(prefix + (f"{m}  (layers {', '.join(map(str, ls))})" if len(schedule.masks) > 1 else str(m)),
             dense_mask(m, view, view, valid)[0, 0], bands) for m, ls in layers.items()]


def show(target: str, length: int = 32, out: str | None = None, overrides: list[str] = ()) -> str:
    """Render `target` (a recipe path or a pattern string); returns the terminal picture."""
    if target.endswith(".toml"):
        pictures = [p for name, schedule, (view, bands, valid), n in recipe_views(target, list(overrides), length)
                    for p in panels(name, schedule, view, bands, valid, n)]
    else:
        view, bands = synthetic_view(length)
        pictures = panels("", MaskSchedule((parse_mask(target, "mask"),)), view, bands,
                          torch.ones(1, length, dtype=torch.bool), 1)
    if out:
        draw_png(pictures, Path(out))
    return "\n\n".join(f"{title}\n{text_grid(m, bands)}" for title, m, bands in pictures)
