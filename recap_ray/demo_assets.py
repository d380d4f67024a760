"""Small stand-ins for downloaded assets, for the demo and the tests: a sentencepiece model.

Real runs use PaliGemma's and Gemma3's tokenizers; the tiny configs use a 400-piece model trained
here in a second, with the same special ids (pad 0, eos 1, bos 2, unk 3).
"""

from __future__ import annotations

import os
from pathlib import Path

CORPUS = """\
Task: pick up the red block and hand it over, State: 12 200 31 7 0 255;
Action: move the left arm to the object then close the gripper
Advantage: positive Advantage: negative Advantage: none
fold the towel, pour the water, open the drawer, place the cup on the plate
the robot passes the object from the left gripper to the right gripper
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 64 100 128 191 254 255
""" * 40


def tokenizer(path_prefix: Path, vocab_size: int = 400) -> Path:
    """Train (once) a tiny BPE sentencepiece model at `path_prefix`.model; returns its path.

    Trained under a temporary prefix and renamed into place, so an interrupted run leaves no half file to reuse.
    """
    import sentencepiece as spm

    model = path_prefix.with_suffix(".model")
    if model.is_file():
        return model
    path_prefix.parent.mkdir(parents=True, exist_ok=True)
    corpus = path_prefix.with_suffix(".txt")
    corpus.write_text(CORPUS)
    staging = path_prefix.with_name(f"{path_prefix.name}.tmp{os.getpid()}")
    try:
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(staging), vocab_size=vocab_size, model_type="bpe",
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True, character_coverage=1.0, num_threads=1,
            minloglevel=2,
        )  # fmt: skip
        staging.with_name(staging.name + ".model").replace(model)
    finally:
        for leftover in (".model", ".vocab"):
            staging.with_name(staging.name + leftover).unlink(missing_ok=True)
    return model
