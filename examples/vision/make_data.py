#!/usr/bin/env python3
"""Makes the bundled vision example: 64 x 64 PNG images of one coloured square on a plain
background, and chat rows asking its colour or the quadrant it is in.

    python3 examples/vision/make_data.py            # needs Pillow; writes images/, *.jsonl
    python3 examples/vision/make_data.py --size 32 --out DIR   # another size, elsewhere
    python3 examples/vision/make_data.py --side 0.375 0.75 --images 200 24 --out DIR
        # the first version's data (12-24 px squares), which the tiny model did not learn to read

Deterministic (fixed seeds): two runs write identical files. Each image is asked both
questions, so the model must read the pixels (colour) and where the image tokens are (quadrant:
a 64 x 64 image is 4 x 4 patches of 16, merged 2 x 2 into 4 image tokens, one per quadrant).
The square's side is 20-32 px of a quadrant's 32, so it fills most of the image token that holds
it: with 12-24 px squares the tiny preset stays at the answers' prior (docs/vision.md).
"""
import argparse
import json
import os
import random

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 64
SIDE = (5 / 8, 1)  # the square's side, as fractions of a quadrant's (20-32 px of 32)
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220),
           "yellow": (235, 200, 20)}
BACKGROUNDS = [(245, 245, 245), (225, 225, 225), (250, 240, 225), (230, 240, 250)]
QUADRANTS = ["top left", "top right", "bottom left", "bottom right"]
QUESTIONS = {
    "colour": ["What colour is the square?", "Which colour is the square in the picture?"],
    "quadrant": ["Which quadrant is the square in?", "Where is the square?"],
}


def draw(rng):
    colour = rng.choice(sorted(COLOURS))
    quadrant = rng.randrange(4)
    half = SIZE // 2
    side = rng.randrange(int(half * SIDE[0]), int(half * SIDE[1]) + 1)
    qx, qy = (quadrant % 2) * half, (quadrant // 2) * half
    x = qx + rng.randrange(0, half - side + 1)
    y = qy + rng.randrange(0, half - side + 1)
    img = Image.new("RGB", (SIZE, SIZE), rng.choice(BACKGROUNDS))
    ImageDraw.Draw(img).rectangle([x, y, x + side - 1, y + side - 1], fill=COLOURS[colour])
    return img, colour, QUADRANTS[quadrant]


def make(split, n_images, seed, out=HERE):
    rng = random.Random(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rows = []
    for i in range(n_images):
        img, colour, quadrant = draw(rng)
        name = f"images/{split}_{i:03d}.png"
        img.save(os.path.join(out, name), optimize=True)
        for kind, answer in (("colour", colour), ("quadrant", quadrant)):
            question = rng.choice(QUESTIONS[kind])
            # The structured-parts form; the tag form ("<image>" + "images") and TRL's work too.
            rows.append({"messages": [
                {"role": "user", "content": [{"type": "image", "image": name},
                                             {"type": "text", "text": question}]},
                {"role": "assistant", "content": answer}]})
    rng.shuffle(rows)
    with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    return len(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--side", type=float, nargs=2, default=SIDE,
                    help="the square's smallest and largest side, fractions of a quadrant's")
    ap.add_argument("--images", type=int, nargs=2, default=(400, 100),
                    help="training and held-out images (each asked both questions)")
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    SIZE = a.size
    SIDE = tuple(a.side)
    n_train = make("train", a.images[0], seed=1, out=a.out)
    n_eval = make("eval", a.images[1], seed=2, out=a.out)
    print(f"wrote {n_train} training rows and {n_eval} held-out rows under {a.out}")
