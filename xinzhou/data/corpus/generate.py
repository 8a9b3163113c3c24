"""Generator of the bundled default corpus (`default.txt`), so the corpus is ours to ship and reproducible.

`xinzhou pretrain` must run with no arguments, offline, on a CPU, and visibly learn within minutes. Real text
of that size would be either a licensing question or too hard for a 1-5M-parameter model, so the corpus is
synthetic English written by this file from a fixed seed: short stories with consistent names and pronouns,
animal and country facts from one fixed table (the same fact always reads the same), question/answer pairs,
arithmetic and counting, and small dialogues. Every kind has structure a small model picks up quickly
(agreement, copying names, memorised facts, digit patterns), so eval loss falls far below the unigram baseline.

Regenerate after changing this file (a test checks the bundled file matches)::

    python -m xinzhou.data.corpus.generate
"""

from __future__ import annotations

import random
from pathlib import Path

SEED = 20250101
NUM_DOCUMENTS = 2200
OUTPUT = Path(__file__).with_name("default.txt")

# --- vocabulary ------------------------------------------------------------------------------------------------
GIRLS = ["Anna", "Lily", "Mia", "Sara", "Emma", "Zoe", "Lucy", "Nora", "Ella", "Ruby", "Maya", "Ivy"]
BOYS = ["Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Finn", "Noah", "Owen", "Paul", "Eli", "Hugo"]
KINDS = ["rabbit", "fox", "bear", "cat", "dog", "mouse", "duck", "frog", "owl", "squirrel", "pig", "lamb"]
SIZES = ["little", "small", "young", "tiny", "big"]
TRAITS = ["kind", "curious", "brave", "shy", "clever", "cheerful", "quiet", "busy"]
PLACES = [
    "in a small house near the forest", "in a quiet village by the sea", "on a farm on a green hill",
    "in a cozy den under an old tree", "in a busy town with a big market", "in a blue house next to the river",
]
FAMILY = ["mother", "father", "grandmother", "grandfather", "big sister", "little brother"]
ACTIVITIES = [
    "play in the garden", "read books", "sing songs", "run in the park", "draw pictures",
    "look at the stars", "swim in the river", "bake cakes", "climb trees", "fly a kite",
]
OBJECTS = ["ball", "kite", "box", "key", "map", "hat", "book", "shell", "stone", "flower", "cup", "bell", "boat"]
ADJECTIVES = ["red", "blue", "green", "yellow", "shiny", "old", "tiny", "big", "soft", "strange", "golden"]
LANDMARKS = ["river", "big tree", "old bridge", "garden", "pond", "hill", "beach", "school", "market", "forest"]
HIDING = ["under the bed", "behind the door", "in the kitchen", "under a chair", "next to the window"]
FEELINGS_GOOD = ["happy", "proud", "excited", "glad"]
FEELINGS_BAD = ["sad", "worried", "upset", "scared"]
MORALS = [
    "it is good to share with friends", "being kind makes everyone happy", "you should never give up",
    "it is fine to ask for help", "friends help each other", "being careful is important",
    "every day can bring a surprise",
]
EXCLAIMS = ["What a nice surprise!", "That is wonderful!", "Wow, look at that!", "I have never seen one before!"]

# (name, plural, class, legs, home, food, sound or "", baby, colour)
ANIMALS = [
    ("cow", "cows", "mammal", 4, "on farms", "grass", "moo", "calf", "black and white"),
    ("dog", "dogs", "mammal", 4, "with people", "meat", "woof", "puppy", "brown"),
    ("cat", "cats", "mammal", 4, "with people", "fish and meat", "meow", "kitten", "grey"),
    ("horse", "horses", "mammal", 4, "on farms", "hay and grass", "neigh", "foal", "brown"),
    ("sheep", "sheep", "mammal", 4, "on farms", "grass", "baa", "lamb", "white"),
    ("pig", "pigs", "mammal", 4, "on farms", "almost anything", "oink", "piglet", "pink"),
    ("duck", "ducks", "bird", 2, "near ponds", "seeds and bugs", "quack", "duckling", "brown"),
    ("owl", "owls", "bird", 2, "in trees", "mice", "hoot", "owlet", "brown"),
    ("hen", "hens", "bird", 2, "on farms", "seeds", "cluck", "chick", "red"),
    ("frog", "frogs", "amphibian", 4, "near ponds", "flies", "ribbit", "tadpole", "green"),
    ("bee", "bees", "insect", 6, "in hives", "nectar", "buzz", "larva", "yellow and black"),
    ("ant", "ants", "insect", 6, "in the ground", "seeds and crumbs", "", "larva", "black"),
    ("spider", "spiders", "arachnid", 8, "in webs", "insects", "", "spiderling", "black"),
    ("snake", "snakes", "reptile", 0, "in grass and rocks", "mice and eggs", "hiss", "hatchling", "green"),
    ("fish", "fish", "fish", 0, "in water", "small plants", "", "fry", "silver"),
    ("bear", "bears", "mammal", 4, "in forests", "berries and fish", "growl", "cub", "brown"),
    ("lion", "lions", "mammal", 4, "on the grassland", "meat", "roar", "cub", "golden"),
    ("elephant", "elephants", "mammal", 4, "on the grassland", "leaves and grass", "trumpet", "calf", "grey"),
    ("rabbit", "rabbits", "mammal", 4, "in burrows", "carrots and grass", "", "kit", "white"),
    ("monkey", "monkeys", "mammal", 2, "in jungles", "fruit", "ooh ooh", "infant", "brown"),
    ("penguin", "penguins", "bird", 2, "in cold places", "fish", "squawk", "chick", "black and white"),
    ("whale", "whales", "mammal", 0, "in the ocean", "tiny sea animals", "", "calf", "blue"),
]
# (country, capital, continent, language)
COUNTRIES = [
    ("France", "Paris", "Europe", "French"), ("Spain", "Madrid", "Europe", "Spanish"),
    ("Italy", "Rome", "Europe", "Italian"), ("Germany", "Berlin", "Europe", "German"),
    ("Japan", "Tokyo", "Asia", "Japanese"), ("China", "Beijing", "Asia", "Chinese"),
    ("Egypt", "Cairo", "Africa", "Arabic"), ("Brazil", "Brasilia", "South America", "Portuguese"),
    ("Portugal", "Lisbon", "Europe", "Portuguese"), ("Mexico", "Mexico City", "North America", "Spanish"),
    ("Greece", "Athens", "Europe", "Greek"), ("Peru", "Lima", "South America", "Spanish"),
    ("Poland", "Warsaw", "Europe", "Polish"), ("Sweden", "Stockholm", "Europe", "Swedish"),
    ("Norway", "Oslo", "Europe", "Norwegian"), ("Turkey", "Ankara", "Asia", "Turkish"),
    ("Argentina", "Buenos Aires", "South America", "Spanish"), ("Kenya", "Nairobi", "Africa", "Swahili"),
    ("Canada", "Ottawa", "North America", "English and French"), ("Australia", "Canberra", "Oceania", "English"),
]
NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
SHOPS = [("bakery", "buy bread"), ("market", "buy apples"), ("shop", "buy milk"), ("library", "borrow a book"),
         ("farm", "get eggs")]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy"]


class _Character:
    """A story character: the name and the pronouns that must agree with it everywhere in the document."""

    def __init__(self, rng: random.Random) -> None:
        girl = rng.random() < 0.5
        self.name = rng.choice(GIRLS if girl else BOYS)
        self.kind = rng.choice(KINDS + ["girl" if girl else "boy"] * 3)
        self.he, self.his, self.him = ("she", "her", "her") if girl else ("he", "his", "him")


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def story(rng: random.Random) -> str:
    """A short story: opening, setting, a found (and maybe lost) object, a friend, an ending with a moral."""
    c, f = _Character(rng), _Character(rng)
    while f.name == c.name:
        f = _Character(rng)
    n, he, his = c.name, c.he, c.his
    obj, adj, mark = rng.choice(OBJECTS), rng.choice(ADJECTIVES), rng.choice(LANDMARKS)
    s = [rng.choice([
        f"Once upon a time, there was a {rng.choice(SIZES)} {c.kind} named {n}.",
        f"There once lived a {rng.choice(TRAITS)} {c.kind} called {n}.",
        f"{n} was a {rng.choice(TRAITS)} little {c.kind}.",
    ])]
    s.append(f"{_cap(he)} lived {rng.choice(PLACES)} with {his} {rng.choice(FAMILY)}.")
    s.append(f"{n} loved to {rng.choice(ACTIVITIES)}.")
    s.append(rng.choice([
        f"One day, {n} found {_a(adj)} {adj} {obj} near the {mark}.",
        f"One {rng.choice(WEATHER)} morning, {n} went to the {mark} and saw {_a(adj)} {adj} {obj}.",
    ]))
    s.append(rng.choice([
        f"{_cap(he)} picked up the {obj} and looked at it carefully.",
        f"\"What is this?\" {n} asked.",
        f"The {obj} was {adj}, and {n} had never seen anything like it.",
    ]))
    s.append(f"{n} showed the {obj} to {his} friend {f.name}, {_a(f.kind)} {f.kind}. {f.name} said, \"{rng.choice(EXCLAIMS)}\"")
    if rng.random() < 0.5:
        s.append(f"But the next day, {n} could not find the {obj}. {_cap(he)} felt {rng.choice(FEELINGS_BAD)}.")
        places = rng.sample(HIDING, 3)
        s.append(f"{_cap(he)} looked {places[0]}, {places[1]}, and {places[2]}.")
        s.append(f"At last, {f.name} found the {obj} near the {mark} and gave it back to {c.him}.")
    if rng.random() < 0.5:
        s.append(f"Then {n} and {f.name} decided to {rng.choice(ACTIVITIES)} together.")
    s.append(rng.choice([
        f"In the end, {n} was very {rng.choice(FEELINGS_GOOD)}. {_cap(he)} learned that {rng.choice(MORALS)}.",
        f"From that day on, {n} and {f.name} were best friends.",
        f"That night, {n} went to sleep with a big smile, holding the {adj} {obj}.",
    ]))
    if rng.random() < 0.4:
        s.append("The end.")
    return " ".join(s)


def _animal_facts(a: tuple, rng: random.Random) -> list[str]:
    name, plural, cls, legs, home, food, sound, baby, colour = a
    an = _cap(_a(name))
    facts = [
        f"The {name} is {_a(cls)} {cls}.",
        f"{an} {name} has {NUMBER_WORDS[legs]} legs." if legs else f"{an} {name} has no legs.",
        f"{_cap(plural)} live {home}.",
        f"{_cap(plural)} eat {food}.",
        f"A baby {name} is called {_a(baby)} {baby}.",
        f"Many {plural} are {colour}.",
    ]
    if sound:
        facts.append(f"{an} {name} says \"{sound}\".")
    rng.shuffle(facts)
    return facts


def animal_doc(rng: random.Random) -> str:
    """Facts from the fixed table, as prose or as questions and answers."""
    a = rng.choice(ANIMALS)
    name, plural, _, legs, home, food, *_ = a
    an = _cap(_a(name))
    if rng.random() < 0.5:
        return f"All about the {name}.\n" + " ".join(_animal_facts(a, rng))
    qa = [
        (f"How many legs does {_a(name)} {name} have?",
         f"{an} {name} has {NUMBER_WORDS[legs]} legs." if legs else f"{an} {name} has no legs."),
        (f"Where do {plural} live?", f"{_cap(plural)} live {home}."),
        (f"What do {plural} eat?", f"{_cap(plural)} eat {food}."),
        (f"What is a baby {name} called?", f"A baby {name} is called {_a(a[7])} {a[7]}."),
    ]
    rng.shuffle(qa)
    return "\n".join(f"Q: {q}\nA: {ans}" for q, ans in qa[: rng.randint(2, 4)])


def country_doc(rng: random.Random) -> str:
    """Capitals, continents and languages, each stated the same way every time."""
    picks = rng.sample(COUNTRIES, rng.randint(2, 5))
    lines = []
    for country, capital, continent, language in picks:
        facts = [
            f"The capital of {country} is {capital}.",
            f"{country} is in {continent}.",
            f"People in {country} speak {language}.",
        ]
        rng.shuffle(facts)
        lines.append(" ".join(facts))
    if rng.random() < 0.5:
        country, capital, *_ = rng.choice(picks)
        lines.append(f"Q: What is the capital of {country}?\nA: The capital of {country} is {capital}.")
    return "Countries of the world.\n" + "\n".join(lines)


def math_doc(rng: random.Random) -> str:
    """Addition, subtraction, times tables, counting, days and months: exact patterns with digits."""
    kind = rng.randrange(5)
    if kind == 0:
        lines = []
        for _ in range(rng.randint(5, 12)):
            a, b = rng.randint(0, 50), rng.randint(0, 50)
            lines.append(f"{a} + {b} = {a + b}" if rng.random() < 0.6 else f"{max(a, b)} - {min(a, b)} = {abs(a - b)}")
        return "Math practice.\n" + "\n".join(lines)
    if kind == 1:
        k = rng.randint(2, 9)
        return f"The times table of {k}.\n" + "\n".join(f"{k} x {i} = {k * i}" for i in range(1, 11))
    if kind == 2:
        start = rng.randint(0, 80)
        end = start + rng.randint(5, 20)
        step = rng.choice([1, 1, 2, 5])
        nums = ", ".join(str(i) for i in range(start, end + 1, step))
        by = "" if step == 1 else f" by {NUMBER_WORDS[step]}s"
        return f"Counting from {start}{by}: {nums}."
    if kind == 3:
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        word_sum = NUMBER_WORDS[a + b] if a + b <= 20 else str(a + b)
        return (f"A word problem. {rng.choice(GIRLS + BOYS)} has {NUMBER_WORDS[a]} {rng.choice(OBJECTS)}s and gets "
                f"{NUMBER_WORDS[b]} more. How many are there now? {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is "
                f"{word_sum}. The answer is {a + b}.")
    seq, what = (DAYS, "days of the week") if rng.random() < 0.5 else (MONTHS, "months of the year")
    i = rng.randrange(len(seq))
    return (f"The {what} are {', '.join(seq[:-1])} and {seq[-1]}. There are {NUMBER_WORDS[len(seq)]} {what}. "
            f"After {seq[i]} comes {seq[(i + 1) % len(seq)]}.")


def dialogue(rng: random.Random) -> str:
    """Two speakers: greeting, weather, an errand, and goodbye, one line per turn."""
    a, b = rng.sample(GIRLS + BOYS, 2)
    shop, item = rng.choice(SHOPS)
    day, weather = rng.choice(DAYS), rng.choice(WEATHER)
    greeting, reply = rng.choice([
        (f"Good morning, {b}!", f"Good morning, {a}!"),
        (f"Hello, {b}! How are you?", f"Hello, {a}! I am fine, thank you."),
        (f"Hi, {b}!", f"Hi, {a}! Nice to see you."),
    ])
    turns = [
        (a, greeting),
        (b, reply),
        (b, "Where are you going?"),
        (a, f"I am going to the {shop} to {item}."),
    ]
    if rng.random() < 0.6:
        turns += [(b, "Can I come with you?"), (a, rng.choice(["Yes, of course!", "Sure, let us go together."]))]
    if rng.random() < 0.6:
        turns += [(b, f"It is very {weather} today."),
                  (a, f"Yes, it is. I hope it will be {rng.choice(WEATHER)} on {day}.")]
    turns.append((a, rng.choice([f"Goodbye, {b}!", f"See you on {day}, {b}!", "Bye for now!"])))
    turns.append((b, rng.choice([f"Goodbye, {a}!", f"See you, {a}!", "Have a nice day!"])))
    return "\n".join(f"{who}: {line}" for who, line in turns)


KINDS_OF_DOCUMENT = [(story, 0.45), (animal_doc, 0.15), (country_doc, 0.1), (math_doc, 0.15), (dialogue, 0.15)]


def generate(num_documents: int = NUM_DOCUMENTS, seed: int = SEED) -> list[str]:
    """The corpus as a list of documents; the same arguments give the same documents on every machine."""
    rng = random.Random(seed)
    makers, weights = zip(*KINDS_OF_DOCUMENT)
    docs = []
    for _ in range(num_documents):
        # several short documents of one kind are joined, so documents span a few hundred tokens
        maker = rng.choices(makers, weights)[0]
        parts = [maker(rng) for _ in range(1 if maker is story else rng.randint(1, 3))]
        docs.append("\n".join(parts))
    return docs


def render(docs: list[str]) -> str:
    """The file format `default_corpus` reads: documents separated by one blank line, none inside a document."""
    assert all(d and "\n\n" not in d for d in docs)
    return "\n\n".join(docs) + "\n"


if __name__ == "__main__":
    text = render(generate())
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT} ({len(text.encode('utf-8')):,} bytes)")
