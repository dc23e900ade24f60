"""Build ``imgsearch/data/captions.txt``, the default caption bank, from the vocabularies.

Every concept in ``imgsearch/data/vocab/*.txt`` is put into a few caption templates chosen for
its kind (object, scene, clothing, food, ...), with a fitting article. Captions are deduplicated
case-insensitively, keeping the first, so the output is stable for a given set of vocabularies.
The colour captions (``imgsearch.colours.COLOUR_CAPTIONS``) come last: appended, so the
captions before them keep their ids (and indexes made with the older bank their meaning).

Usage::

    python scripts/make_caption_bank.py          # write captions.txt
    python scripts/make_caption_bank.py --check  # exit 1 if captions.txt is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from imgsearch.colours import COLOUR_CAPTIONS  # noqa: E402 - after the path is set

DATA = Path(__file__).resolve().parent.parent / "imgsearch" / "data"
VOCAB = DATA / "vocab"
OUTPUT = DATA / "captions.txt"

# Templates per kind of concept; "{}" is replaced by the concept with its article.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": ("a photo of {}", "a close-up photo of {}", "a photo with {} in it"),
    "scene": ("a photo of {}", "a view of {}", "a wide photo of {}"),
    "clothing": ("a photo of {}", "a close-up photo of {}", "a photo of a person wearing {}"),
    "food": ("a photo of {}", "a close-up photo of {}", "a photo of {} on a table"),
    "animal": ("a photo of {}", "a close-up photo of {}"),
    "people": ("a photo of {}", "a candid photo of {}"),
    "event": ("a photo of {}", "a photo from {}"),
    "text": ("{}", "an image of {}"),
    "art": ("{}", "an image of {}"),
}

# Vocabulary files in output order, with the kind used outside any "# kind:" section.
SOURCES: tuple[tuple[str, str], ...] = (
    ("imagenet.txt", "object"),
    ("coco.txt", "object"),
    ("places365.txt", "scene"),
    ("everyday.txt", "object"),
)

# Words (the head noun, or the whole name) that take no article: mass nouns and meals.
MASS_WORDS = """
art beer bread breakfast broccoli brunch calligraphy candy carbonara cash cereal champagne cheese
chocolate coffee consomme corn cream curry dessert dice dinner dough downtown eggnog embroidery
fabric falafel fog foliage food fruit gear graffiti guacamole handwriting hay hummus ice juice
lightning lotion luggage lunch mail music oatmeal origami paper pasta pho popcorn pottery powder
rain ramen rapeseed rice shrimp snow soup spaghetti spray stew sunscreen sushi syrup tea toast
tundra wine wool yogurt
"""
MASS = frozenset(MASS_WORDS.split()) | {"fried chicken", "grilled salmon", "pad thai"}

# Names that take "the" rather than "a"/"an".
DEFINITE = frozenset({"sky", "ocean", "sea"})

# Singular words that end in "s" but not in "-ss" or "-us".
SINGULAR_S = frozenset(
    {"triceratops", "mantis", "malinois", "iris", "tennis", "canvas", "lens", "gas", "news"}
)

# Words that start a plural phrase whatever the phrase ends with ("people dancing").
PLURAL_HEADS = frozenset({"people", "children", "kids"})

PREPOSITIONS = re.compile(r" (?:of|on|in|with|at|from|over|for|near) ")
SECTION = re.compile(r"^#\s*(\w+):")
LETTERS_WITH_AN = frozenset("AEFHILMNORSX")  # letter names that start with a vowel sound
A_BEFORE_VOWEL = ("uni", "use", "usu", "uti", "uk", "eu", "one", "once")
AN_BEFORE_H = ("hour", "honest", "honor", "heir")


def is_plural(word: str) -> bool:
    """Guess whether a lowercase English noun is plural."""
    if word in SINGULAR_S or word.endswith(("ss", "us", "'s")):
        return False
    return word.endswith("s")


def indefinite(name: str) -> str:
    """Return "a" or "an" for ``name``, by sound where the spelling misleads."""
    head = name.split(" ", 1)[0].split("-", 1)[0]
    if head.isalpha() and head.isupper():  # acronyms and single letters: "an SUV", "a T-shirt"
        return "an" if head[0] in LETTERS_WITH_AN else "a"
    if head[0].isdigit():
        return "an" if head.startswith("8") or head[:2] in ("11", "18") else "a"
    low = name.lower()
    if low.startswith(AN_BEFORE_H):
        return "an"
    if low[0] in "aeiou" and not low.startswith(A_BEFORE_VOWEL):
        return "an"
    return "a"


def with_article(name: str) -> str:
    """Put the right article (or none) before a concept name."""
    low = name.lower()
    first = low.split(" ", 1)[0]
    if first in ("a", "an", "the") or first in PLURAL_HEADS:
        return name
    if low in DEFINITE:
        return f"the {name}"
    head = PREPOSITIONS.split(low, maxsplit=1)[0]
    last = head.rsplit(" ", 1)[-1]
    if low in MASS or last in MASS or is_plural(last):
        return name
    return f"{indefinite(name)} {name}"


def read_vocab(path: Path, default_kind: str) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, concept)`` for each concept line; ``# kind: ...`` lines start sections."""
    kind = default_kind
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            section = SECTION.match(line)
            if section:
                kind = section.group(1)
                if kind not in TEMPLATES:
                    raise SystemExit(f"{path}:{number}: unknown kind {kind!r}")
            continue
        yield kind, " ".join(line.split())


def build_captions() -> list[str]:
    """All captions, in vocabulary order, deduplicated case-insensitively."""
    seen: set[str] = set()
    captions: list[str] = []
    for filename, default_kind in SOURCES:
        for kind, concept in read_vocab(VOCAB / filename, default_kind):
            phrase = with_article(concept)
            for template in TEMPLATES[kind]:
                caption = template.format(phrase)
                if caption.lower() not in seen:
                    seen.add(caption.lower())
                    captions.append(caption)
    for caption in COLOUR_CAPTIONS:  # last: the ids before them stay as they were
        if caption.lower() not in seen:
            seen.add(caption.lower())
            captions.append(caption)
    return captions


def main(argv: list[str] | None = None) -> int:
    """Write captions.txt, or with ``--check`` compare it with what would be written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if captions.txt differs from the output"
    )
    args = parser.parse_args(argv)
    text = "\n".join(build_captions()) + "\n"
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else None
        if current != text:
            print(f"{OUTPUT} is out of date: run python scripts/make_caption_bank.py")
            return 1
        print(f"{OUTPUT} is up to date ({text.count(chr(10))} captions)")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {text.count(chr(10))} captions to {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
