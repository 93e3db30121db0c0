"""The no-download tokenizer: a small byte-level BPE shipped in the repo.

Tests and tiny presets must run offline (nothing can come from the Hugging Face
hub), yet every family's processor needs a real fast tokenizer carrying its
special tokens. So we train a byte-level BPE once, with ``tokenizers``, on a few
hundred robot instructions produced by fixed templates, and ship the result as
``assets/robot_bpe.json``. ``build_tokenizer_json`` reproduces that file exactly;
``load_tokenizer`` wraps it and appends a family's special tokens at the end of
the vocabulary (so the base ids never move).

Byte-level means any string tokenizes (no unknown token), only less compactly
than with the instruction vocabulary it was trained on.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vla.utils.atomic import atomic_file

ASSET_PATH = Path(__file__).parent / "assets" / "robot_bpe.json"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
BASE_SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0..3
VOCAB_SIZE = 512

_VERBS = ["pick up", "put", "push", "move", "place", "open", "close", "turn on", "turn off", "slide", "lift", "grasp"]
_OBJECTS = [
    "the black bowl", "the red mug", "the plate", "the drawer", "the window", "the door", "the faucet",
    "the button", "the peg", "the puck", "the cream cheese", "the ketchup", "the basket", "the stove",
    "the microwave", "the wine bottle", "the alphabet soup", "the tomato sauce", "the cup", "the block",
]  # fmt: skip
_PLACES = [
    "on the plate", "in the basket", "on the stove", "in the top drawer of the cabinet", "to the left",
    "to the right", "next to the cup", "on top of the cabinet", "into the hole", "onto the shelf",
]  # fmt: skip
_METAWORLD = [
    "reach the goal position", "push the puck to the goal", "pick and place the puck", "open the door",
    "open the drawer", "close the drawer", "press the button from the top", "insert the peg into the hole",
    "open the window", "close the window",
]  # fmt: skip


def instruction_corpus() -> list[str]:
    """A fixed, ordered list of a few hundred robot instructions (the BPE training text)."""
    lines = [f"{v} {o}" for v, o in itertools.product(_VERBS, _OBJECTS)]
    lines += [f"put {o} {p}" for o, p in itertools.product(_OBJECTS, _PLACES)]
    lines += _METAWORLD
    lines += [line.capitalize() + "." for line in lines[::7]]  # some casing and punctuation
    return lines


def train_bpe(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE on ``instruction_corpus()``; deterministic for a given corpus."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BASE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(instruction_corpus(), trainer=trainer)
    return tok


def build_tokenizer_json(path: Path | str = ASSET_PATH, vocab_size: int = VOCAB_SIZE) -> Path:
    """(Re)build the shipped tokenizer file; written to a temporary name first, then renamed."""
    path = Path(path)
    with atomic_file(path) as tmp:
        train_bpe(vocab_size).save(str(tmp), pretty=True)
    return path


def load_tokenizer(
    special_tokens: list[str] | dict[str, str] = (), path: Path | str = ASSET_PATH
) -> PreTrainedTokenizerFast:
    """The shipped BPE as a transformers fast tokenizer, plus ``special_tokens`` appended to the vocabulary.

    A family's processor finds its image placeholders by these special tokens; without them it fails
    with "Mismatch in `image` token count" (transformers' processors count them). A dict names them as the family's own tokenizer
    does (SmolVLM's ``fake_image_token``, read by LeRobot's SmolVLA as ``tokenizer.fake_image_token_id``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer asset {path} is missing; rebuild it with build_tokenizer_json()")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(path)),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        **(
            {"extra_special_tokens": dict(special_tokens)}
            if isinstance(special_tokens, dict)
            else {"additional_special_tokens": list(special_tokens)}
        ),
    )
