"""The data stage: TinyStories -> tokenizer -> flat token streams (see ncn.data.cli).

Consumers need only `load_meta` (meta.json, verified against the .bin files and the
tokenizer) and `open_split` (a split's tokens as a memmap). This module stays light:
`datasets` and `tokenizers` are imported by the stage commands, not here.
"""

from ncn.data.meta import load_meta, open_split
from ncn.data.textfile import EOT

__all__ = ["EOT", "load_meta", "open_split"]
