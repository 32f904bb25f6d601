"""Write the tiny data sets of the example recipes in this folder (docs/your-data.md).

    python recipes/examples/make_data.py            # -> recipes/examples/data/
    python recipes/examples/make_data.py OUT_DIR    # elsewhere (the recipes then need --set paths)

Everything is generated offline and seeded (the same files every time, a few MB in all):

    data/text/*.txt                 the docstrings of a few standard-library modules, one file each
    data/shapes/<class>/*.png       16x16 grey circles, squares and crosses (an image folder)
    data/table/reviews.{csv,jsonl,parquet}   short reviews with a "positive"/"negative" label
    data/audio/*.wav + metadata.csv digit strings "spoken" as tones at 8 kHz, with transcripts
    data/episodes/mountaincar.npz   MountainCar-v0 episodes of a noisy push-with-the-velocity policy
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import sys
import wave
from pathlib import Path

import numpy as np

MODULES = ("argparse", "collections", "csv", "dataclasses", "difflib", "functools", "itertools", "json",
           "pathlib", "random", "re", "statistics", "string", "textwrap", "typing", "unittest")


def write_text(out: Path) -> None:
    """One .txt per module: its docstring and its public functions' and classes' docstrings."""
    folder = out / "text"
    folder.mkdir(parents=True, exist_ok=True)
    for name in MODULES:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(module) or ""]
        for attr in sorted(getattr(module, "__all__", dir(module))):
            obj = getattr(module, attr, None)
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) and inspect.getdoc(obj):
                parts.append(f"{attr}\n\n{inspect.getdoc(obj)}")
        (folder / f"{name}.txt").write_text("\n\n".join(p for p in parts if p) + "\n", encoding="utf-8")


def shape(kind: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A grey picture of a circle, square or cross at a random place and size, with noise."""
    y, x = np.mgrid[:size, :size]
    r = rng.uniform(3, 6)
    cy, cx = rng.uniform(r, size - r, 2)
    if kind == "circle":
        mask = np.abs(np.hypot(y - cy, x - cx) - r) < 1.0
    elif kind == "square":
        mask = (np.maximum(np.abs(y - cy), np.abs(x - cx)) - r + 0.5 < 1.0) & (np.maximum(np.abs(y - cy), np.abs(x - cx)) > r - 1.5)
    else:
        mask = ((np.abs(y - cy) < 1.0) | (np.abs(x - cx) < 1.0)) & (np.maximum(np.abs(y - cy), np.abs(x - cx)) < r)
    picture = mask * rng.uniform(160, 255) + rng.normal(0, 20, (size, size))
    return np.clip(picture, 0, 255).astype(np.uint8)


def write_images(out: Path, per_class: int = 100) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for kind in ("circle", "cross", "square"):
        folder = out / "shapes" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(shape(kind, rng)).save(folder / f"{kind}_{i:03d}.png")


GOOD = ("great", "wonderful", "lovely", "excellent", "delightful", "superb")
BAD = ("awful", "boring", "terrible", "dreadful", "dull", "poor")
THINGS = ("the film", "the soup", "this book", "the hotel", "the concert", "our trip", "the service", "the game")
FRAMES = ("{thing} was {word}.", "honestly, {thing} was {word}!", "I found {thing} {word}.", "{thing}: {word}, really {word}.")


def write_table(out: Path, rows: int = 300) -> None:
    """The same reviews as CSV, JSON lines and Parquet (columns text, label)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    records = []
    for _ in range(rows):
        label = "positive" if rng.random() < 0.5 else "negative"
        word = rng.choice(GOOD if label == "positive" else BAD)
        records.append({"text": rng.choice(FRAMES).format(thing=rng.choice(THINGS), word=word), "label": label})
    folder = out / "table"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "reviews.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(records)
    (folder / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    pd.DataFrame(records).to_parquet(folder / "reviews.parquet", index=False)


def tone_digits(text: str, rng: np.random.Generator, rate: int = 8000) -> np.ndarray:
    """A digit string as tones: digit d is 0.12 s at 300 + 150 d Hz, 0.04 s of silence between."""
    pieces = [np.zeros(int(0.05 * rate))]
    for digit in text:
        t = np.arange(int(0.12 * rate)) / rate
        freq = (300 + 150 * int(digit)) * rng.uniform(0.97, 1.03)
        pieces += [rng.uniform(0.3, 0.6) * np.sin(2 * np.pi * freq * t) * np.hanning(len(t)), np.zeros(int(0.04 * rate))]
    signal = np.concatenate(pieces) + rng.normal(0, 0.01, sum(len(p) for p in pieces))
    return (np.clip(signal, -1, 1) * 32767).astype(np.int16)


def write_audio(out: Path, count: int = 200, rate: int = 8000) -> None:
    """16-bit mono WAVs at 8 kHz (the mel tokenizer resamples them to 16 kHz) and metadata.csv."""
    rng = np.random.default_rng(0)
    folder = out / "audio"
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        text = "".join(str(d) for d in rng.integers(0, 10, rng.integers(1, 5)))
        name = f"clips/{i:04d}.wav"
        with wave.open(str(folder / name), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(tone_digits(text, rng, rate).tobytes())
        rows.append({"file_name": name, "text": text})
    with (folder / "metadata.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)


def write_episodes(out: Path, episodes: int = 60) -> None:
    """MountainCar-v0 played by "push the way you are moving" with epsilon-random actions (0, 0.3,
    0.6, cycled): returns from about -90 (reached the flag fast) to -200 (never reached it)."""
    import gymnasium

    env = gymnasium.make("MountainCar-v0")
    rng = np.random.default_rng(0)
    states, actions, rewards, lengths = [], [], [], []
    for e in range(episodes):
        epsilon = (0.0, 0.3, 0.6)[e % 3]
        state, _ = env.reset(seed=e)
        done, steps = False, 0
        while not done:
            action = int(rng.integers(3)) if rng.random() < epsilon else (2 if state[1] >= 0 else 0)
            states.append(state)
            actions.append(action)
            state, reward, terminated, truncated, _ = env.step(action)
            rewards.append(reward)
            done, steps = terminated or truncated, steps + 1
        lengths.append(steps)
    env.close()
    folder = out / "episodes"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "mountaincar.npz", states=np.asarray(states, np.float32), actions=np.asarray(actions, np.int64),
             rewards=np.asarray(rewards, np.float32), episode_lengths=np.asarray(lengths, np.int64))


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "data"
    for write in (write_text, write_images, write_table, write_audio, write_episodes):
        write(out)
    print(f"wrote the example data under {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
