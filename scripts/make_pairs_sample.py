"""Write the bundled question → answer sample (data/samples/pairs/qa.csv) for ``data=pairs``.

A CSV with columns ``question``, ``answer`` and ``topic`` (five topics, for the stratified split), in a layout
unlike Amazon's JSON lines. The rows come from templates over word lists written here, so the repository
ships no third-party text, and every answer follows from its question (copy a word, apply a plural rule,
recall a small fixed table): a tiny model can learn it. It keeps what the cleaning step exists for: one
empty answer, two exact duplicates, an HTML entity and doubled spaces. Run once; the output is committed.

    python scripts/make_pairs_sample.py
"""

import csv
import random
from pathlib import Path

COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "grey"]
OBJECTS = ["car", "hat", "ball", "cup", "chair", "door", "kite", "lamp", "boat", "shirt", "bike", "box", "pen",
           "scarf", "tent"]
MATERIALS = ["wood", "glass", "steel", "paper", "cotton", "wool", "stone", "plastic", "clay", "leather"]
THINGS = ["table", "bowl", "spoon", "bridge", "bag", "vase", "fence", "bench", "jar", "mask", "shelf", "gate"]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
             ("early", "late"), ("open", "closed"), ("full", "empty"), ("strong", "weak"), ("young", "old"),
             ("wet", "dry"), ("loud", "quiet"), ("hard", "soft"), ("rich", "poor"), ("high", "low"),
             ("thick", "thin"), ("long", "short"), ("clean", "dirty"), ("heavy", "light"), ("near", "far"),
             ("cheap", "expensive"), ("first", "last"), ("inside", "outside"), ("sweet", "sour"),
             ("awake", "asleep"), ("brave", "afraid"), ("calm", "angry"), ("smooth", "rough"), ("tall", "short"),
             ("wide", "narrow")]
NOUNS = ["apple", "river", "window", "garden", "pencil", "teacher", "flower", "planet", "engine", "castle",
         "box", "bus", "dish", "fox", "church", "glass", "brush", "wish", "watch", "class",
         "city", "baby", "story", "party", "lady", "family", "country", "berry", "penny", "puppy"]
LEGS = {"bird": 2, "chicken": 2, "duck": 2, "owl": 2, "penguin": 2, "ostrich": 2, "dog": 4, "cat": 4,
        "horse": 4, "cow": 4, "goat": 4, "sheep": 4, "lion": 4, "tiger": 4, "mouse": 4, "rabbit": 4,
        "zebra": 4, "camel": 4, "ant": 6, "bee": 6, "beetle": 6, "butterfly": 6, "fly": 6, "wasp": 6,
        "grasshopper": 6, "spider": 8, "scorpion": 8, "tick": 8, "crab": 10, "lobster": 10}
NUMBERS = {2: "two", 4: "four", 6: "six", 8: "eight", 10: "ten"}
PER_TOPIC = 60


def plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "sh", "ch")):
        return noun + "es"
    return noun + "s"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def rows(rng: random.Random) -> list[tuple[str, str, str]]:
    colors = rng.sample([(c, o) for c in COLORS for o in OBJECTS], PER_TOPIC)
    materials = rng.sample([(m, t) for m in MATERIALS for t in THINGS], PER_TOPIC)
    out = [(f"What color is the {c} {o}?", f"The {o} is {c}.", "colors") for c, o in colors]
    out += [(f"What is the {m} {t} made of?", f"The {t} is made of {m}.", "materials") for m, t in materials]
    out += [(f"What is the opposite of {a}?", f"The opposite of {a} is {b}.", "opposites") for a, b in OPPOSITES]
    out += [(f"Which word means the opposite of {b}?", f"The opposite of {b} is {a}.", "opposites")
            for a, b in OPPOSITES]
    out += [(f"What is the plural of {n}?", f"The plural of {n} is {plural(n)}.", "plurals") for n in NOUNS]
    out += [(f"How do you write more than one {n}?", f"More than one {n} is written {plural(n)}.", "plurals")
            for n in NOUNS]
    out += [(f"How many legs does {article(a)} {a} have?", f"{article(a).capitalize()} {a} has {NUMBERS[n]} legs.",
             "animals") for a, n in LEGS.items()]
    out += [(f"Count the legs of {article(a)} {a}.", f"{article(a).capitalize()} {a} has {n} legs.", "animals")
            for a, n in LEGS.items()]
    rng.shuffle(out)
    return out


def main() -> None:
    rng = random.Random(16)
    data = rows(rng)
    data[7] = (data[7][0], "", data[7][2])  # an empty answer: skipped as empty:answer
    data.insert(120, data[3])  # two exact duplicates: skipped as duplicate
    data.insert(250, data[40])
    data[11] = (data[11][0].replace(" ", "  ", 1), data[11][1], data[11][2])  # doubled space, cleaned away
    data[12] = (data[12][0], data[12][1].replace(" is ", " is&nbsp;", 1), data[12][2])  # an HTML entity
    out = Path(__file__).resolve().parents[1] / "data/samples/pairs/qa.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer", "topic"])
        writer.writerows(data)
    print(f"wrote {len(data)} rows to {out}")


if __name__ == "__main__":
    main()
