"""Build ``robot_small.model``: a small SentencePiece model for the pi05-tiny / pi05-small presets.

It is trained offline on a generated, seeded corpus of robot instructions ("put the red cube in the
bowl", "open the top drawer", ...), the discretised-state prompt format ("Task: ..., State: 12 255 ...;
\\nAction: ") and LIBERO-like task strings.  byte_fallback keeps any text encodable.  The result is
deterministic for a given sentencepiece version (single thread, fixed seed and corpus order).

Usage:  python actquant_core/assets/tokenizers/build_small_tokenizer.py [--out DIR] [--vocab 1024]
"""

from __future__ import annotations

import argparse
import io
import logging
import random
from pathlib import Path

import sentencepiece

log = logging.getLogger("build_small_tokenizer")

COLORS = "red green blue yellow black white orange purple pink brown gray silver".split()
OBJECTS = (
    "cube block ball cup mug bowl plate bottle can box lid sponge spoon fork knife pen marker book "
    "banana apple orange carrot cheese ketchup butter milk bread towel cloth toy pot pan basket tray"
).split()
CONTAINERS = "bowl basket box tray plate drawer bin cabinet shelf pot pan sink".split()
PLACES = (
    "on the table|on the left side|on the right side|in the center|near the robot|on the stove|"
    "on top of the cabinet|next to the bowl|behind the box|in front of the plate"
).split("|")
SIZES = "small large big little tall short".split()
VERBS_PICK = "pick up|grab|lift|take|grasp".split("|")
VERBS_PLACE = "put|place|set|drop|move".split("|")
PREPS = "in|into|on|onto|inside|on top of|next to|behind|in front of".split("|")
ARTICULATED = (
    "open the drawer|close the drawer|open the top drawer|close the bottom drawer|open the middle drawer|"
    "open the cabinet door|close the cabinet door|open the microwave|close the microwave|turn on the stove|"
    "turn off the stove|turn on the faucet|turn off the faucet|push the button|press the switch|"
    "rotate the knob|slide the window|lift the lid|put the lid on the pot|stack the blocks|"
    "unstack the cubes|wipe the table|fold the towel|pour the water|stir the pot|go home|stop"
).split("|")


def _phrase(rng: random.Random) -> str:
    parts = []
    if rng.random() < 0.3:
        parts.append(rng.choice(SIZES))
    if rng.random() < 0.8:
        parts.append(rng.choice(COLORS))
    parts.append(rng.choice(OBJECTS))
    return "the " + " ".join(parts)


def generate_corpus(n_lines: int, seed: int) -> list[str]:
    """Deterministic list of instruction-like lines."""
    rng = random.Random(seed)
    lines: list[str] = []
    for _ in range(n_lines):
        kind = rng.random()
        if kind < 0.35:
            text = f"{rng.choice(VERBS_PLACE)} {_phrase(rng)} {rng.choice(PREPS)} the {rng.choice(CONTAINERS)}"
        elif kind < 0.55:
            text = f"{rng.choice(VERBS_PICK)} {_phrase(rng)} {rng.choice(PLACES)}"
        elif kind < 0.7:
            text = rng.choice(ARTICULATED)
        elif kind < 0.8:
            text = (
                f"{rng.choice(VERBS_PICK)} {_phrase(rng)} and {rng.choice(VERBS_PLACE)} it "
                f"{rng.choice(PREPS)} the {rng.choice(CONTAINERS)}"
            )
        else:
            state = " ".join(str(rng.randrange(256)) for _ in range(rng.choice((8, 14, 32))))
            task = f"{rng.choice(VERBS_PLACE)} {_phrase(rng)} {rng.choice(PREPS)} the {rng.choice(CONTAINERS)}"
            text = f"Task: {task}, State: {state};\nAction: "
        if rng.random() < 0.2:
            text = text.capitalize()
        if rng.random() < 0.1:
            text += "."
        lines.append(text)
    # every number 0..255 at least once, so the state prompt tokenises compactly
    lines.append(" ".join(str(i) for i in range(256)))
    return lines


def build(out_dir: Path, vocab_size: int, seed: int, n_lines: int) -> Path:
    lines = generate_corpus(n_lines, seed)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=False,
        hard_vocab_limit=False,
        bos_id=2,
        eos_id=1,
        pad_id=0,
        unk_id=3,
        num_threads=1,
        shuffle_input_sentence=False,
        normalization_rule_name="identity",
        user_defined_symbols=["\n"],
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,  # like the Gemma/PaliGemma tokenizer
        minloglevel=2,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "robot_small.model"
    path.write_bytes(model.getvalue())
    sp = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    log.info("wrote %s: vocab %d, %d bytes", path, sp.GetPieceSize(), len(model.getvalue()))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lines", type=int, default=20000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.out, args.vocab, args.seed, args.lines)


if __name__ == "__main__":
    main()
