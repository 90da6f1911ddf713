"""Write the table of ``transformers`` families ``modify.convert`` takes, for docs/how-to/convert.md.

Run ``PYTHONPATH=.:tests:tests/conversion python -m benchmarks.convert_table``: it converts each
family of ``tests/conversion/transformers_families.py`` as the family test does and prints the
Markdown table (family, class, result, module count, ``Function`` leaves left opaque); the test
checks that the page holds these very rows.
"""

from __future__ import annotations

import torch
import transformers
from test_transformers_families import table_row
from transformers_families import FAMILIES, SIZES, example

import modify

HEADER = "| family | `transformers` class | result | modules | `Function` leaves (opaque ops) |\n|---|---|---|---|---|"


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    print(HEADER)
    for family, make, kind, field, kwargs in FAMILIES:
        torch.manual_seed(0)
        model = make(transformers).eval()
        (b, n), _ = SIZES[kind]
        try:
            converted = modify.convert(model, (example(kind, b, n, generator),), kwargs, output=field)
        except TypeError as error:
            print(f"| {family} | `{type(model).__name__}` | refused: {str(error)[:120]} | - | - |", flush=True)
            continue
        print(table_row(family, model, converted), flush=True)


if __name__ == "__main__":
    main()
