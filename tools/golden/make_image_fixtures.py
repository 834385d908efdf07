#!/usr/bin/env python3
"""Writes the image decoding / preprocessing fixtures of tests/test_image.cpp.

Deterministic: every image is drawn from a fixed NumPy seed and written with fixed encoder
settings, so two runs with the same Pillow (and its bundled libjpeg-turbo / libwebp / zlib) give
byte-identical files. Usage:

    /tmp/golden-venv/bin/pip install Pillow numpy      # torch 2.11, transformers 5.17 already
    /tmp/golden-venv/bin/python tools/golden/make_image_fixtures.py --out tests/data/images
    # optional: the torchvision ("fast") processor's distance to the PIL one (docs/vision.md)
    /tmp/golden-venv/bin/pip install --no-deps 'torchvision==0.26.*'
    /tmp/golden-venv/bin/python tools/golden/make_image_fixtures.py --out tests/data/images \
        --measure-fast

What goes into --out (all small; the whole folder stays well under 1 MB):

  <name>.{png,jpg,webp}   the test images (odd sizes; PNG RGB/grey/palette+tRNS/RGBA/LA/16-bit,
                          baseline, 4:4:4, progressive and grey JPEG, lossless/lossy WebP)
  <name>.rgb              what Pillow's Image.open(p).convert("RGB") gives: H*W*3 bytes, row-major
  <case>.resized.rgb      Pillow's bicubic resize of that RGB to the smart_resize size (small cases)
  <case>.pixel_values.f32 the HF image processor's pixel_values, float32 little-endian (tiny case)
  index.json              per image: size and reference file; per preprocessing case: config,
                          resized size, grid_thw, patches, LM tokens, FNV-1a 64 of the resized
                          bytes, the float64 sum of pixel_values and 128 sampled (row, col, value)
                          entries; plus a smart_resize table (HF's function) over many sizes

The reference processor is transformers' `Qwen2VLImageProcessorPil` (the PIL backend of the
class named by Qwen3.5's preprocessor_config.json, `Qwen2VLImageProcessor(Fast)`), built with
Qwen3.5's preprocessor values (patch 16, merge 2, temporal 2, mean = std = 0.5, min 65536,
max 16777216) and, per case, other min/max pixels. The script asserts that the processor's
pixel_values equal the spec's formula applied to Pillow's resized bytes (so the stored resized
bytes and the sampled values describe the same thing).
"""

import argparse
import io
import json
import os
import struct
import zlib

import numpy as np
import PIL
from PIL import Image, features

import transformers
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
    smart_resize,
)

QWEN35 = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5, 0.5, 0.5],
              image_std=[0.5, 0.5, 0.5], size={"shortest_edge": 65536, "longest_edge": 16777216})


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def pattern(h, w, c, seed, noise=6.0, freq=0.3):
    """Smooth gradients, a few sharp rectangles and a little noise: compresses well, but
    exercises every filter tap."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((h, w, c))
    for k in range(c):
        fy, fx, ph = rng.uniform(0.02, freq), rng.uniform(0.02, freq), rng.uniform(0, 6.28)
        out[..., k] = 127.5 + 100 * np.sin(fy * y + ph) * np.cos(fx * x - ph)
    for _ in range(3):
        y0, x0 = rng.randint(0, h), rng.randint(0, w)
        out[y0:y0 + max(1, h // 4), x0:x0 + max(1, w // 5)] = rng.randint(0, 256, size=c)
    out += rng.normal(0, noise, size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]  # (x0, y0, dx, dy) of the seven passes


def write_png_raw(path, rows_bytes, w, h, bit_depth, colour_type, plte=None, adam7_rgb=None):
    """A minimal PNG writer for what Pillow cannot save (16-bit RGB, 2-bit grey, palette indices
    past the palette, Adam7 interlacing of an 8-bit RGB array given as adam7_rgb): filter 0."""
    if adam7_rgb is not None:
        rows_bytes = []
        for x0, y0, dx, dy in ADAM7:
            sub = adam7_rgb[y0::dy, x0::dx]
            if sub.size:
                rows_bytes += [sub[y].tobytes() for y in range(sub.shape[0])]
    raw = b"".join(b"\x00" + r for r in rows_bytes)
    data = (b"\x89PNG\r\n\x1a\n" +
            png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0,
                                           int(adam7_rgb is not None))) +
            (png_chunk(b"PLTE", plte) if plte else b"") +
            png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(data)


def make_images(out):
    """Writes the test images; returns {file name: note}."""
    notes = {}

    def save(im, name, note, **kw):
        im.save(os.path.join(out, name), **kw)
        notes[name] = note

    save(Image.fromarray(pattern(53, 37, 3, 1), "RGB"), "rgb_37x53.png", "RGB 8-bit PNG",
         optimize=False, compress_level=9)
    save(Image.fromarray(pattern(480, 640, 3, 2, noise=0, freq=0.05) // 32 * 32, "RGB"), "rgb_640x480.png",
         "RGB 8-bit PNG, posterised so it stays small", compress_level=9)
    save(Image.fromarray(pattern(1, 1, 3, 3), "RGB"), "rgb_1x1.png", "one RGB pixel")
    save(Image.fromarray(pattern(17, 29, 1, 4)[..., 0], "L"), "grey_29x17.png", "grey 8-bit PNG")
    pal = Image.fromarray(pattern(23, 31, 3, 5), "RGB").quantize(colors=13, dither=0)
    pal.info["transparency"] = 2  # tRNS: index 2 transparent (ignored by convert("RGB"))
    save(pal, "palette_31x23.png", "palette PNG (13 colours) with tRNS", transparency=2)
    rgba = pattern(19, 23, 4, 6)
    rgba[:5, :7, 3] = 0  # fully transparent corner with its own colour
    save(Image.fromarray(rgba, "RGBA"), "rgba_23x19.png", "RGBA 8-bit PNG")
    save(Image.fromarray(pattern(9, 15, 2, 7), "LA"), "la_15x9.png", "grey+alpha 8-bit PNG")
    g16 = pattern(11, 21, 1, 8)[..., 0].astype(np.uint16) * 3
    g16[0, :4] = [0, 255, 256, 65535]
    save(Image.fromarray(g16), "grey16_21x11.png", "grey 16-bit PNG (values 0..765)")
    rgb16 = pattern(13, 19, 3, 9).astype(np.uint16) * 257 + np.arange(19, dtype=np.uint16)[:, None]
    write_png_raw(os.path.join(out, "rgb16_19x13.png"),
                  [rgb16[y].astype(">u2").tobytes() for y in range(13)], 19, 13, 16, 2)
    notes["rgb16_19x13.png"] = "RGB 16-bit PNG (own writer)"
    g2 = pattern(7, 13, 1, 10)[..., 0] >> 6
    rows = []
    for y in range(7):
        bits = np.zeros(16, np.uint8)
        bits[:13] = g2[y]
        rows.append(bytes((bits[i] << 6 | bits[i + 1] << 4 | bits[i + 2] << 2 | bits[i + 3])
                          for i in range(0, 16, 4)))
    write_png_raw(os.path.join(out, "grey2_13x7.png"), rows, 13, 7, 2, 0)
    notes["grey2_13x7.png"] = "grey 2-bit PNG (own writer)"
    idx = (np.arange(7 * 5).reshape(5, 7) * 37 % 11).astype(np.uint8)  # indices 0..10
    write_png_raw(os.path.join(out, "palette_oob_7x5.png"), [idx[y].tobytes() for y in range(5)],
                  7, 5, 8, 3, plte=bytes(range(10, 10 + 3 * 6)))
    notes["palette_oob_7x5.png"] = "palette PNG, 6 entries, indices up to 10 (own writer)"
    write_png_raw(os.path.join(out, "interlaced_19x11.png"), None, 19, 11, 8, 2,
                  adam7_rgb=pattern(11, 19, 3, 19))
    notes["interlaced_19x11.png"] = "Adam7-interlaced RGB PNG (own writer)"

    save(Image.fromarray(pattern(61, 97, 3, 11), "RGB"), "photo_97x61.jpg",
         "baseline JPEG 4:2:0 q85", quality=85)
    save(Image.fromarray(pattern(33, 45, 3, 12), "RGB"), "photo444_45x33.jpg",
         "JPEG 4:4:4 q90", quality=90, subsampling=0)
    save(Image.fromarray(pattern(35, 51, 3, 13), "RGB"), "progressive_51x35.jpg",
         "progressive JPEG 4:2:0 q75", quality=75, progressive=True)
    save(Image.fromarray(pattern(19, 27, 1, 14)[..., 0], "L"), "grey_27x19.jpg", "grey JPEG")
    save(Image.fromarray(pattern(17, 23, 4, 18), "CMYK"), "cmyk_23x17.jpg",
         "CMYK JPEG (Adobe, inverted) q90", quality=90)
    save(Image.fromarray(pattern(21, 33, 4, 15), "RGBA"), "lossless_33x21.webp",
         "lossless WebP with alpha", lossless=True)
    save(Image.fromarray(pattern(27, 41, 3, 16), "RGB"), "lossy_41x27.webp", "lossy WebP q80",
         quality=80)
    save(Image.fromarray(pattern(17, 25, 4, 17), "RGBA"), "lossy_alpha_25x17.webp",
         "lossy WebP with alpha q70", quality=70)
    return notes


def hf_processor(min_pixels, max_pixels):
    kw = dict(QWEN35)
    kw["size"] = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return Qwen2VLImageProcessorPil(**kw)


def spec_pixel_values(resized, grid_h, grid_w):
    """The spec's section 2 formula: rows in 2x2 merge-group order, columns (C, T, py, px)."""
    v = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    v = (v - np.float32(0.5)) / np.float32(0.5)  # [H, W, C]
    p = v.reshape(grid_h // 2, 2, 16, grid_w // 2, 2, 16, 3).transpose(0, 3, 1, 4, 6, 2, 5)
    p = np.broadcast_to(p[:, :, :, :, :, None], p.shape[:5] + (2,) + p.shape[5:])
    return p.reshape(grid_h * grid_w, 1536)


CASES = [  # (case name, image, min_pixels, max_pixels, store the resized bytes / pixel_values)
    ("rgb_37x53_default", "rgb_37x53.png", 65536, 16777216, False, False),
    ("rgb_37x53_tiny", "rgb_37x53.png", 1024, 2048, True, True),  # 53->64 up, 37->32 down
    ("rgb_640x480_default", "rgb_640x480.png", 65536, 16777216, False, False),  # no resize
    ("rgb_640x480_down", "rgb_640x480.png", 4096, 6144, True, False),  # 10x downscale
    ("rgb_640x480_down_odd", "rgb_640x480.png", 4096, 70000, False, False),
    ("rgb_1x1_default", "rgb_1x1.png", 65536, 16777216, False, False),  # up to the minimum
    ("rgb_1x1_qvu", "rgb_1x1.png", 4096, 16777216, True, False),
    ("grey_29x17_default", "grey_29x17.png", 65536, 16777216, False, False),
    ("palette_31x23_qvu", "palette_31x23.png", 4096, 16777216, True, False),
    ("rgba_23x19_qvu", "rgba_23x19.png", 4096, 16777216, True, False),
    ("photo_97x61_default", "photo_97x61.jpg", 65536, 16777216, False, False),
    ("photo_97x61_qvu", "photo_97x61.jpg", 4096, 16777216, True, False),
    ("lossy_41x27_qvu", "lossy_41x27.webp", 4096, 16777216, True, False),
]

# smart_resize table: (H, W, min, max); the spec's section 8 sizes plus odd and extreme ones.
SMART = [(448, 448), (720, 1280), (1280, 720), (1080, 1920), (480, 640), (600, 800), (768, 1024),
         (224, 224), (100, 100), (3000, 4000), (5000, 5000), (53, 37), (1, 1), (1, 200), (3, 599),
         (48, 80), (16, 16), (4097, 4095), (8000, 100), (11, 2100), (4096, 4096), (4100, 4100),
         (333, 777), (16, 3200), (720, 720), (1000, 3)]
SMART_CONFIGS = [(65536, 16777216), (4096, 16777216), (1024, 2048), (4096, 6144), (3136, 1003520)]


def measure_fast(out):
    """Prints how far the torchvision ("fast") processor, HF's default for Qwen3.5, lies from the
    PIL one (= Pillow = deltatron) on the fixture cases and a few larger photos-like images.
    Needs torchvision; writes nothing."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    extra = [("pattern_1280x720", pattern(720, 1280, 3, 21), 65536, 16777216),
             ("pattern_1000x750", pattern(750, 1000, 3, 22), 65536, 16777216),
             ("pattern_300x200", pattern(200, 300, 3, 23), 65536, 16777216),
             ("pattern_3000x2000", pattern(2000, 3000, 3, 24, freq=0.05), 65536, 1003520)]
    items = []
    for case, name, min_px, max_px, _, _ in CASES:
        with Image.open(os.path.join(out, name)) as im:
            items.append((case, im.convert("RGB"), min_px, max_px))
    items += [(n, Image.fromarray(a, "RGB"), mn, mx) for n, a, mn, mx in extra]
    for case, rgb_im, min_px, max_px in items:
        kw = dict(QWEN35)
        kw["size"] = {"shortest_edge": min_px, "longest_edge": max_px}
        fast = Qwen2VLImageProcessor(**kw)(rgb_im, return_tensors="np")["pixel_values"]
        slow = hf_processor(min_px, max_px)(rgb_im, return_tensors="np")["pixel_values"]
        d = np.abs(fast.astype(np.float64) - slow)
        print(f"{case:24s} {rgb_im.width}x{rgb_im.height}: max |fast - PIL| = {d.max():.6f} "
              f"({d.max() * 127.5:.2f} u8 levels), {np.mean(d > 1e-6) * 100:.3f} % of values "
              f"differ")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--measure-fast", action="store_true",
                    help="only print the torchvision processor's distance to the PIL one on the "
                    "images in --out (needs torchvision)")
    args = ap.parse_args()
    if args.measure_fast:
        measure_fast(args.out)
        return
    os.makedirs(args.out, exist_ok=True)
    notes = make_images(args.out)

    index = {"generator": {"pillow": PIL.__version__, "transformers": transformers.__version__,
                           "numpy": np.__version__,
                           "libjpeg_turbo": features.version("libjpeg_turbo"),
                           "webp": features.version("webp"), "zlib": features.version("zlib"),
                           "processor": "Qwen2VLImageProcessorPil"},
             "images": [], "cases": [], "smart_resize": []}
    for name in sorted(notes):
        with Image.open(os.path.join(args.out, name)) as im:
            mode = im.mode
            rgb = np.array(im.convert("RGB"))
        entry = {"file": name, "pillow_mode": mode, "note": notes[name], "width": rgb.shape[1],
                 "height": rgb.shape[0], "rgb_fnv1a64": fnv1a64(rgb.tobytes())}
        if rgb.size <= 65536:  # larger ones: the hash alone
            entry["rgb"] = os.path.splitext(name)[0] + ".rgb"
            with open(os.path.join(args.out, entry["rgb"]), "wb") as f:
                f.write(rgb.tobytes())
        index["images"].append(entry)

    for case, name, min_px, max_px, store_resized, store_pv in CASES:
        with Image.open(os.path.join(args.out, name)) as im:
            rgb_im = im.convert("RGB")
        H, W = rgb_im.height, rgb_im.width
        h, w = smart_resize(H, W, factor=32, min_pixels=min_px, max_pixels=max_px)
        resized = np.array(rgb_im.resize((w, h), resample=Image.BICUBIC, reducing_gap=None))
        out = hf_processor(min_px, max_px)(rgb_im, return_tensors="np")
        pv = out["pixel_values"]
        grid = [int(x) for x in out["image_grid_thw"][0]]
        assert pv.dtype == np.float32 and grid == [1, h // 16, w // 16], (case, grid)
        assert np.array_equal(pv, spec_pixel_values(resized, h // 16, w // 16)), case
        rng = np.random.RandomState(1000 + len(index["cases"]))
        rows = rng.randint(0, pv.shape[0], 128)
        cols = rng.randint(0, pv.shape[1], 128)
        entry = {"case": case, "file": name, "min_pixels": min_px, "max_pixels": max_px,
                 "resized_hw": [h, w], "grid_thw": grid, "patches": int(pv.shape[0]),
                 "tokens": int(np.prod(grid)) // 4, "resized_fnv1a64": fnv1a64(resized.tobytes()),
                 "pixel_sum": float(pv.astype(np.float64).sum()),
                 "samples": [[int(r), int(c), float(pv[r, c])] for r, c in zip(rows, cols)]}
        if store_resized:
            entry["resized"] = case + ".resized.rgb"
            with open(os.path.join(args.out, entry["resized"]), "wb") as f:
                f.write(resized.tobytes())
        if store_pv:
            entry["pixel_values"] = case + ".pixel_values.f32"
            with open(os.path.join(args.out, entry["pixel_values"]), "wb") as f:
                f.write(pv.astype("<f4").tobytes())
        index["cases"].append(entry)

    for min_px, max_px in SMART_CONFIGS:
        proc = hf_processor(min_px, max_px)
        for H, W in SMART:
            row = {"H": H, "W": W, "min_pixels": min_px, "max_pixels": max_px}
            if max(H, W) / min(H, W) > 200:
                try:
                    smart_resize(H, W, factor=32, min_pixels=min_px, max_pixels=max_px)
                    raise AssertionError("expected HF to reject the aspect ratio")
                except ValueError:
                    index["smart_resize"].append(dict(row, error="aspect ratio"))
                continue
            h, w = smart_resize(H, W, factor=32, min_pixels=min_px, max_pixels=max_px)
            patches = proc.get_number_of_image_patches(H, W)
            assert patches == (h // 16) * (w // 16)
            index["smart_resize"].append(dict(row, h=h, w=w, patches=patches,
                                              tokens=patches // 4))
    with open(os.path.join(args.out, "index.json"), "w") as f:  # one entry a line
        f.write('{"generator": ' + json.dumps(index["generator"]))
        for key in ("images", "cases", "smart_resize"):
            f.write(',\n"' + key + '": [\n' + ",\n".join(json.dumps(e) for e in index[key]) +
                    "]")
        f.write("}\n")
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {len(os.listdir(args.out))} files, {total} bytes, to {args.out}")


if __name__ == "__main__":
    main()
