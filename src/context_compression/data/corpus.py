"""A deterministic, licence-clean generator of English-like text.

The demo and the tests need text that a tiny language model learns within minutes on a CPU, with no
download and no licence question. Each document follows a small cast (two or three people, two places)
through sentences built from hand-written templates, so names recur within a document while numbers,
colours, objects and days vary between sentences: enough regularity to learn, enough content that a
compressed context has something to remember.
"""

import random

NAMES = (
    "Ada", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko", "Luca",
    "Maya", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wen", "Yusuf", "Zoe",
)
PLACES = (
    "Lisbon", "Oslo", "Cairo", "Lima", "Kyoto", "Dublin", "Nairobi", "Quebec", "Porto", "Riga", "Hanoi",
    "Tunis", "Bergen", "Cusco", "Galway", "Malaga",
)
PROFESSIONS = (
    "baker", "sailor", "teacher", "farmer", "painter", "doctor", "miner", "weaver", "pilot", "potter",
    "tailor", "fisher", "builder", "singer", "gardener", "clerk",
)
ADJECTIVES = (
    "old", "young", "quiet", "cheerful", "tired", "clever", "patient", "careful", "brave", "busy", "shy",
    "proud", "gentle", "curious",
)
QUALITIES = ("heavy", "light", "small", "large", "smooth", "rough", "warm", "cold", "new", "broken", "shiny")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "grey", "orange", "purple")
# (singular, plural): irregular plurals are spelled out rather than derived.
OBJECTS = (
    ("box", "boxes"), ("basket", "baskets"), ("lamp", "lamps"), ("book", "books"), ("jar", "jars"),
    ("chair", "chairs"), ("rope", "ropes"), ("kite", "kites"), ("bottle", "bottles"), ("coat", "coats"),
    ("knife", "knives"), ("cup", "cups"), ("bell", "bells"), ("map", "maps"), ("shelf", "shelves"),
)
FOODS = ("apples", "pears", "loaves of bread", "bowls of soup", "plums", "cakes", "fish", "onions", "figs")
DESTINATIONS = ("harbour", "market", "station", "library", "bridge", "mill", "school", "chapel", "square")
VENUES = ("cafe", "museum", "garden", "theatre", "bakery", "workshop", "inn", "park")
RELATIVES = ("brother", "sister", "aunt", "uncle", "cousin", "neighbour", "friend", "grandmother")
EVENTS = ("storm", "festival", "wedding", "harvest", "concert", "flood", "race", "fair")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TIMES = ("at dawn", "at noon", "in the evening", "before lunch", "after dark", "in the morning")
CARRY_VERBS = ("carried", "brought", "sent", "delivered", "pulled", "took")
FIND_VERBS = ("found", "repaired", "sold", "painted", "lost", "cleaned", "counted", "hid")
NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def _with_article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _sentence(rng: random.Random, names: list[str], places: list[str]) -> str:
    """One sentence from a randomly chosen template, drawing people and places from the document's cast."""
    name, other = rng.sample(names, 2)
    place = rng.choice(places)
    singular, plural = rng.choice(OBJECTS)
    templates = (
        lambda: f"The {rng.choice(ADJECTIVES)} {rng.choice(PROFESSIONS)} in {place} {rng.choice(CARRY_VERBS)} "
        f"{rng.choice(NUMBER_WORDS)} {rng.choice(COLOURS)} {plural} to the {rng.choice(DESTINATIONS)}.",
        lambda: f"{name} met {other} at the {rng.choice(VENUES)} in {place} on {rng.choice(DAYS)}.",
        lambda: f"On {rng.choice(DAYS)}, {name} bought {rng.randint(2, 40)} {plural} for "
        f"{rng.randint(3, 99)} coins.",
        lambda: f"{name} is {_with_article(rng.choice(ADJECTIVES))} {rng.choice(PROFESSIONS)} who lives near the "
        f"{rng.choice(DESTINATIONS)} of {place}.",
        lambda: f"Every {rng.choice(DAYS)}, {name} walks {rng.choice(NUMBER_WORDS)} miles to the "
        f"{rng.choice(DESTINATIONS)} {rng.choice(TIMES)}.",
        lambda: f"{name}'s {rng.choice(RELATIVES)} {rng.choice(FIND_VERBS)} the {rng.choice(COLOURS)} "
        f"{singular} before the {rng.choice(EVENTS)}.",
        lambda: f"After the {rng.choice(EVENTS)} in {place}, {name} and {other} shared "
        f"{rng.choice(NUMBER_WORDS)} {rng.choice(FOODS)}.",
        lambda: f"The {singular} that {name} {rng.choice(FIND_VERBS)} in {place} was {rng.choice(QUALITIES)} "
        f"and {rng.choice(COLOURS)}.",
        lambda: f"In {1850 + rng.randint(0, 170)}, {name} left {place} with {rng.choice(NUMBER_WORDS)} "
        f"{plural} and {_with_article(rng.choice(COLOURS))} {rng.choice(OBJECTS)[0]}.",
        lambda: f"{name} asked {other} why the {rng.choice(DESTINATIONS)} in {place} was closed "
        f"{rng.choice(TIMES)}.",
    )
    return rng.choice(templates)()


def generate_corpus(
    num_documents: int, seed: int = 0, min_sentences: int = 3, max_sentences: int = 8
) -> list[str]:
    """Return `num_documents` documents of `min_sentences` to `max_sentences` sentences each.

    The same arguments always give the same documents (the generator owns its `random.Random`).
    """
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}.")
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(
            f"Need 1 <= min_sentences <= max_sentences, got min_sentences={min_sentences}, "
            f"max_sentences={max_sentences}."
        )
    rng = random.Random(seed)
    documents = []
    for _ in range(num_documents):
        names = rng.sample(NAMES, rng.randint(2, 3))
        places = rng.sample(PLACES, 2)
        num_sentences = rng.randint(min_sentences, max_sentences)
        documents.append(" ".join(_sentence(rng, names, places) for _ in range(num_sentences)))
    return documents


def demo_splits(seed: int = 0, num_train: int = 2000, num_heldout: int = 200) -> tuple[list[str], list[str]]:
    """Train and held-out documents for the demo, drawn from disjoint seeds.

    Both splits come from the same distribution; duplicates across them are dropped from the held-out
    split so that held-out scores measure generalisation, not recall.
    """
    train = generate_corpus(num_train, seed=2 * seed)
    seen = set(train)
    heldout = [doc for doc in generate_corpus(num_heldout, seed=2 * seed + 1) if doc not in seen]
    return train, heldout
