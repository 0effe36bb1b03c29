#!/usr/bin/env python3
"""Writes combination_keys.json: test vectors for combination keys.

An implementation of the encoding written from its specification (the module
docs of feature-store/src/combination.rs), independent of the Rust code, so
that the vectors check the Rust code rather than repeat it. Standard library
only. Run from anywhere:

    python3 feature-store/testdata/combination_keys.py
"""

import bisect
import hashlib
import json
import math
import pathlib
import struct

DOMAIN = b"mlgw.combination.v1\x00"


def u32(n):
    return struct.pack(">I", n)


def text(s):
    b = s.encode("utf-8")
    return u32(len(b)) + b


def part_value(part):
    """(tag bytes, the bin for a binned number or None)."""
    if part.get("missing"):
        return b"\x00", None
    if "category" in part:
        return b"\x01" + text(part["category"]), None
    value = part["value"]
    if isinstance(value, float) and math.isnan(value):
        return b"\x00", None
    index = bisect.bisect_right(part["edges"], value)  # edges <= value
    return b"\x02" + u32(index), index


def vector(name, parts):
    encoding = DOMAIN + u32(len(parts))
    described = []
    for part in parts:
        tag, index = part_value(part)
        encoding += text(part["feature"]) + tag
        d = dict(part)
        if "value" in part:
            d["bin"] = index
            if isinstance(part["value"], float) and math.isnan(part["value"]):
                d["value"] = "NaN"
        described.append(d)
    key = hashlib.sha256(encoding).digest()[:16].hex()
    return {"name": name, "parts": described, "encoding": encoding.hex(), "key": key}


AMOUNT = [10.0, 50.0, 200.0, 1000.0]
HOUR = [6.0, 12.0, 18.0]

CASES = [
    ("one category", [{"feature": "country", "category": "DE"}]),
    (
        "three categories",
        [
            {"feature": "country", "category": "DE"},
            {"feature": "gender", "category": "f"},
            {"feature": "category", "category": "grocery"},
        ],
    ),
    (
        "the same three, reordered",
        [
            {"feature": "category", "category": "grocery"},
            {"feature": "country", "category": "DE"},
            {"feature": "gender", "category": "f"},
        ],
    ),
    ("an empty category", [{"feature": "country", "category": ""}]),
    ("a missing value", [{"feature": "country", "missing": True}]),
    ("non-ASCII text", [{"feature": "merchant_city", "category": "Zürich 東京"}]),
    ("below the first edge", [{"feature": "amount", "value": 3.5, "edges": AMOUNT}]),
    ("on an edge", [{"feature": "amount", "value": 50.0, "edges": AMOUNT}]),
    ("above the last edge", [{"feature": "amount", "value": 5000.0, "edges": AMOUNT}]),
    ("a negative value", [{"feature": "amount", "value": -20.0, "edges": AMOUNT}]),
    ("NaN is missing", [{"feature": "amount", "value": float("nan"), "edges": AMOUNT}]),
    (
        "the example's combination",
        [
            {"feature": "merchant_category", "category": "electronics"},
            {"feature": "country", "category": "FR"},
            {"feature": "amount", "value": 129.99, "edges": AMOUNT},
            {"feature": "hour", "value": 23.0, "edges": HOUR},
            {"feature": "card_present", "category": "false"},
        ],
    ),
    ("no parts", []),
]


def main():
    out = pathlib.Path(__file__).with_name("combination_keys.json")
    doc = {
        "about": "Combination key test vectors, encoding v1: see feature-store/src/combination.rs. "
        "Each vector gives the ordered parts (a category, a missing value, or a value with its bin edges "
        "and the bin it falls in), the canonical encoding in hex and the key. Made by combination_keys.py.",
        "vectors": [vector(name, parts) for name, parts in CASES],
    }
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(CASES)} vectors)")


if __name__ == "__main__":
    main()
