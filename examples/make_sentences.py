"""Regenerate compressor/data/sentences.txt: varied English sentences for default calibration and the demo.

They are built from templates with a fixed seed, so the file is reproducible and carries no
third-party text.
"""
import random
from pathlib import Path

SUBJECTS = ["A man", "A woman", "The child", "Two dogs", "A small cat", "The old farmer", "A group of students",
            "The chef", "My neighbour", "A young girl", "The doctor", "Several tourists", "The pilot", "A musician",
            "The team", "An elderly couple", "A police officer", "The teacher", "A cyclist", "The little boy"]
VERBS = ["is playing", "is cooking", "is reading", "is riding", "is painting", "is cleaning", "is watching",
         "is carrying", "is fixing", "is singing about", "is looking at", "is walking past", "is slicing",
         "is talking about", "is throwing", "is building", "is selling", "is photographing"]
OBJECTS = ["a guitar", "an onion", "the newspaper", "a red bicycle", "the kitchen floor", "a football",
           "a wooden fence", "the evening news", "a large box", "the broken car", "a tomato", "the river",
           "a horse", "some bread", "a piano", "the old bridge", "a computer", "the garden", "a kite", "the train"]
PLACES = ["in the park", "at the beach", "on the street", "in a small room", "near the station", "at home",
          "in the rain", "under a tree", "on a stage", "in the market", "at night", "in the snow"]
NEWS = ["Prices of {x} rose sharply this week.", "The government announced new rules for {x}.",
        "Officials said the talks about {x} would continue.", "Experts warn that {x} could become scarce.",
        "Sales of {x} fell for the third month in a row.", "A new report questions the safety of {x}."]
TOPICS = ["electric cars", "fresh water", "rice", "housing", "solar panels", "train tickets", "coffee",
          "medicine", "steel", "internet access", "public transport", "wheat"]
QUESTIONS = ["How do I {v} without {o}?", "What is the best way to {v}?", "Why does it take so long to {v}?",
             "Is it safe to {v} alone?", "Can anyone recommend a place to {v}?"]
ACTIONS = ["learn a new language", "fix a leaking tap", "train a puppy", "bake bread", "save money",
           "grow tomatoes", "write a cover letter", "clean a laptop screen", "plan a long trip", "start running"]
LACKS = ["spending much", "any tools", "help", "a car", "a lot of time", "prior experience"]


def make_sentences(count: int = 600, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < count:
        kind = rng.random()
        if kind < 0.55:
            s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
            out.add(s + (f" {rng.choice(PLACES)}." if rng.random() < 0.6 else "."))
        elif kind < 0.8:
            out.add(rng.choice(NEWS).format(x=rng.choice(TOPICS)))
        else:
            out.add(rng.choice(QUESTIONS).format(v=rng.choice(ACTIONS), o=rng.choice(LACKS)))
    ordered = sorted(out)
    rng.shuffle(ordered)
    return ordered


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "compressor" / "data" / "sentences.txt"
    target.write_text("\n".join(make_sentences()) + "\n", encoding="utf-8")
    print(f"wrote {target}")
