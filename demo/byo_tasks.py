"""Two extra synthetic tasks for the "bring your own adapters" routing evaluation.

Why: the demo ships three adapters whose phrasings the router was designed around. To check that a
user can add adapters of their own (train them on the demo base model, hand the router a few example
prompts, and have unseen phrasings routed to them), we need tasks the demo never saw, built on the
same customer messages and the same prompt contract (:func:`loraplex.demo.data.format_prompt`):

* ``priority``: one of :data:`PRIORITIES`. The label is a pure function of cue words in the message
  (:func:`priority_of`, precedence urgent > high > low > normal), so it is learnable from the message
  and checkable by hand. Every generated message carries at most one cue sentence; ``normal``
  messages carry none or a cue-free one, so "has an extra sentence" is no tell. Most cue sentences
  are frames shared by all levels with a cue phrase in a slot, so only the cue words tell the label.
* ``summary``: ``"<topic> about <product>"`` (:func:`summary_of`), e.g. ``"billing question about
  coffee maker"``: the topic is a fixed phrase per intent (:data:`SUMMARY_TOPICS`) and the product is
  copied from the message, which the tiny base model's copy circuit can do. Every summary message
  names its product (a product sentence is added when the intent clause has no product slot).
  At most 7 words. Train messages mostly name made-up products (and :data:`TRAIN_EXTRA_PRODUCTS`)
  so that copying, not memorising the 30 train products, is what the adapter learns.

Splits follow the demo: ``heldout`` uses heldout-only instruction phrasings (disjoint from the train
ones), the demo's heldout message pools (names, products, greetings, sign-offs) and heldout-only cue
frames, cue sentences and product sentences; the cue *words* are shared, since the label is defined
by them. Pure Python and deterministic: the same ``(task, n, seed, split)`` always gives the same examples.
"""

from __future__ import annotations

import random
import re

from loraplex.demo.data import INTENTS, SPLITS, Example, make_message

BYO_TASKS = ("priority", "summary")
PRIORITIES = ("low", "normal", "high", "urgent")
INSTRUCTION_FIRST_RATE = 0.7  # same share of instruction-first prompts as the demo tasks

# Seed salts keep these streams disjoint from each other and from the demo tasks' streams.
_SPLIT_SALT = {"train": 2_000_029, "heldout": 9_000_011}
_TASK_SALT = {"priority": 53, "summary": 71}
_ROUTING_SALT = 5_550_001

# --------------------------------------------------------------------------- #
# Instruction phrasings: (train, heldout), disjoint
# --------------------------------------------------------------------------- #

INSTRUCTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "priority": {
        "train": (
            "What is the priority of this ticket?",
            "Priority?",
            "Assign a priority: low, normal, high or urgent.",
            "How urgent is this customer message?",
            "Triage this ticket by priority.",
            "Set the priority level for this support request.",
            "Rate how quickly we need to respond: low, normal, high or urgent.",
            "Label the ticket priority.",
            "Which priority should this message get?",
            "Priority level (low/normal/high/urgent):",
            "Decide the urgency of this request.",
            "Give this ticket a priority.",
            "Read the message and output its priority.",
            "How soon does this need handling? Answer with a priority.",
            "Classify the priority of the customer message.",
            "Ticket priority, one word.",
        ),
        "heldout": (
            "Urgency?",
            "How fast should the team react to this? Reply with the priority.",
            "Put this message in the right priority bucket.",
            "For the on-call queue, what priority fits this note?",
            "Sort this request by how soon it needs an answer.",
            "Estimate the priority of the sender's issue.",
        ),
    },
    "summary": {
        "train": (
            "Summarize this message in one line.",
            "Summary?",
            "Give a one-line summary of the ticket.",
            "Write a short summary of the customer's request.",
            "TL;DR of this message:",
            "Sum up the ticket briefly.",
            "Describe this support request in one short line.",
            "Give me the gist of this message.",
            "Provide a brief summary: topic and product.",
            "Condense this message into a short headline.",
            "One-line summary, please.",
            "Write a ticket title for this message.",
            "Summarize the request in a short phrase.",
            "Short summary of the ticket:",
            "Summarise what this customer wrote, in a few words.",
            "Turn this message into a one-line ticket summary.",
        ),
        "heldout": (
            "Gist?",
            "Boil this note down to a single line.",
            "Headline for this ticket?",
            "In a handful of words, what is the sender writing in about?",
            "Write a compact subject line for this request.",
            "Recap the message briefly.",
        ),
    },
}

# --------------------------------------------------------------------------- #
# Priority: cue words define the label; cue sentences carry them
# --------------------------------------------------------------------------- #

# Matched case-insensitively on word boundaries. None of them occurs in the demo's own message text
# (tests check that), so a message without an added cue is ``normal``.
PRIORITY_CUES: dict[str, tuple[str, ...]] = {
    "urgent": ("urgent", "asap", "emergency", "immediately", "outage", "critical"),
    "high": ("important", "blocked", "blocking", "deadline", "serious"),
    "low": ("no rush", "no hurry", "whenever", "just curious", "not a big deal", "at your convenience"),
}
_PRIORITY_PRECEDENCE = ("urgent", "high", "low")  # first level with a matching cue wins
_CUE_PATTERNS = {
    level: re.compile(r"\b(?:" + "|".join(re.escape(c) for c in cues) + r")\b", re.IGNORECASE)
    for level, cues in PRIORITY_CUES.items()
}

# Cue sentences come two ways. Most are *frames* shared by every level, with a slot filled by a cue
# phrase of the wanted level (or, for ``normal``, by a cue-free phrase): the frame carries no label,
# so the adapter has to key on the cue words, which is what makes it read unseen heldout frames.
# The others are level-specific sentences. Frames and sentences are split train/heldout; the cue
# phrases are shared (the label is defined by the words, an unseen word could not be learned).
_SLOT_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "state": {  # "This is {w}."
        "urgent": ("urgent", "critical", "an emergency", "causing an outage"),
        "high": ("important", "serious", "blocking my work", "blocking the team"),
        "low": ("not a big deal", "no rush", "just curious"),
        "normal": ("a simple question", "a follow-up", "new to me", "a routine request", "about my order"),
    },
    "thing": {  # "There is {w}."
        "urgent": ("an emergency", "an outage", "a critical bug"),
        "high": ("a deadline", "a serious problem", "an important meeting"),
        "low": ("no rush", "no hurry"),
        "normal": ("a question", "a small issue", "one more detail", "a second account"),
    },
    "when": {  # "Please reply {w}."
        "urgent": ("immediately", "ASAP", "as an emergency"),
        "high": ("before my deadline", "as this is important", "since I'm blocked"),
        "low": ("whenever you can", "at your convenience", "with no rush"),
        "normal": ("by email", "with the details", "in this thread", "on this ticket"),
    },
    "lead": {  # "{w}: please take a look."  (capitalised: the cue also opens sentences)
        "urgent": ("Urgent", "Critical", "Emergency", "ASAP"),
        "high": ("Important", "Serious", "Deadline", "Blocked"),
        "low": ("No rush", "No hurry", "Just curious"),
        "normal": ("Question", "Update", "Note", "Info"),
    },
}
_FRAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "state": (
            "This is {w}.",
            "It's {w} for us.",
            "Honestly, this is {w}.",
            "This one is {w}.",
            "I think it is {w}.",
            "To be clear, this is {w}.",
            "The issue is {w}.",
            "Right now it is {w}.",
            "I would say this is {w}.",
        ),
        "thing": (
            "There is {w}.",
            "We have {w} here.",
            "Just so you know, there's {w}.",
            "Note that there is {w}.",
            "On my side there is {w}.",
            "Also, we have {w}.",
            "There seems to be {w}.",
        ),
        "when": (
            "Please reply {w}.",
            "Get back to me {w}.",
            "I need an answer {w}.",
            "Please fix it {w}.",
            "Could you check this {w}?",
            "Please handle this {w}.",
            "Send me an update {w}.",
        ),
        "lead": ("{w}: please take a look.", "{w}, please read this.", "{w}!", "{w} ticket.", "{w}: see below."),
    },
    "heldout": {
        "state": ("For me this is {w}.", "The matter is {w}.", "Please note this is {w}."),
        "thing": ("Please be aware there is {w}.", "Right now we have {w}.", "We are dealing with {w}."),
        "when": ("Kindly respond {w}.", "Please look into it {w}."),
        "lead": ("{w} request from our side.", "{w} note for the team."),
    },
}
_CUE_SENTENCES: dict[str, dict[str, tuple[str, ...]]] = {
    "urgent": {
        "train": (
            "It's an emergency, my shop depends on it.",
            "URGENT: please respond.",
            "It is critical that you reply immediately.",
            "Our whole office is in an outage.",
            "Please treat this as urgent.",
        ),
        "heldout": ("Urgent request from our side.", "Everyone here is hit by the outage.", "A critical problem."),
    },
    "high": {
        "train": (
            "I'm blocked until this is fixed.",
            "It's blocking my work.",
            "My team is blocked by this.",
            "I have a deadline on Friday.",
            "It is important that this gets fixed.",
        ),
        "heldout": ("The problem is blocking our release.", "We are blocked on this one.", "My deadline is tomorrow."),
    },
    "low": {
        "train": (
            "Just curious.",
            "No rush at all.",
            "Whenever you get a chance.",
            "There's no hurry on this.",
            "I'm just curious, no rush.",
        ),
        "heldout": ("Reply whenever it suits you.", "No rush, take your time.", "Just curious how this works."),
    },
    "normal": {
        "train": (
            "Thanks in advance.",
            "Could you look into it?",
            "Let me know if you need more details.",
            "I hope you can help.",
            "Thank you for checking.",
        ),
        "heldout": ("Appreciate you checking.", "Any help is welcome.", "Thanks for looking at this."),
    },
}
_FIXED_CUE_RATE = 0.3  # share of level-specific sentences; the rest are frames
_NORMAL_CUE_RATE = 0.6  # share of ``normal`` messages with a cue-free extra sentence: an extra is no tell


def _cue_sentence(rng: random.Random, level: str, split: str) -> str:
    if rng.random() < _FIXED_CUE_RATE:
        return rng.choice(_CUE_SENTENCES[level][split])
    slot = rng.choice(tuple(_FRAMES[split]))
    return rng.choice(_FRAMES[split][slot]).format(w=rng.choice(_SLOT_WORDS[slot][level]))


def cue_sentences(level: str, split: str) -> tuple[str, ...]:
    """Every cue sentence a ``level`` message of ``split`` can carry (for checks against :func:`priority_of`)."""
    if level not in PRIORITIES:
        raise ValueError(f"unknown priority {level!r}; expected one of {PRIORITIES}")
    _check("priority", split)
    framed = tuple(
        frame.format(w=w)
        for slot, frames in _FRAMES[split].items()
        for frame in frames
        for w in _SLOT_WORDS[slot][level]
    )
    return _CUE_SENTENCES[level][split] + framed


def priority_of(message: str) -> str:
    """The gold priority of ``message``: the first of urgent, high, low whose cue words
    (:data:`PRIORITY_CUES`) it contains, else ``normal``."""
    for level in _PRIORITY_PRECEDENCE:
        if _CUE_PATTERNS[level].search(message):
            return level
    return "normal"


# --------------------------------------------------------------------------- #
# Summary: topic phrase per intent + the product, copied
# --------------------------------------------------------------------------- #

SUMMARY_TOPICS: dict[str, str] = {
    "reset_password": "password reset",
    "billing": "billing question",
    "order_status": "delivery status",
    "cancel_order": "cancellation request",
    "technical_issue": "technical problem",
    "update_account": "account update",
}
SUMMARY_MAX_WORDS = 8
# Train-only real products on top of the demo's 30 train products (none is a demo heldout product).
# Why: trained on the 30 alone the adapter memorises them as a closed set and answers a train product
# for every unseen one (0 % heldout exact match in a first build).
TRAIN_EXTRA_PRODUCTS = (
    "garden hose",
    "pressure cooker",
    "toaster",
    "microwave",
    "rice cooker",
    "stand mixer",
    "food processor",
    "juicer",
    "waffle iron",
    "dish rack",
    "cutting board",
    "knife set",
    "frying pan",
    "stock pot",
    "wine glasses",
    "bath towel",
    "shower head",
    "bath mat",
    "duvet cover",
    "pillow",
    "mattress",
    "bed frame",
    "bookshelf",
    "wardrobe",
    "sofa",
    "armchair",
    "side table",
    "floor lamp",
    "wall clock",
    "picture frame",
    "curtains",
    "rug",
    "doormat",
    "space heater",
    "air purifier",
    "humidifier",
    "smoke detector",
    "doorbell",
    "security camera",
    "smart plug",
    "power bank",
    "usb cable",
    "phone charger",
    "wireless charger",
    "sound bar",
    "record player",
    "guitar",
    "microphone",
    "drawing tablet",
    "graphics card",
    "hard drive",
    "memory card",
    "flash drive",
    "laptop bag",
    "suitcase",
    "travel pillow",
    "hiking boots",
    "sneakers",
    "sandals",
    "rain jacket",
    "wool scarf",
    "leather gloves",
    "baseball cap",
    "necklace",
    "earrings",
    "bike helmet",
    "bike lock",
    "scooter",
    "skateboard",
    "tennis racket",
    "golf balls",
    "dumbbells",
    "jump rope",
    "treadmill",
    "exercise bike",
    "sleeping bag",
    "camping stove",
    "cooler box",
    "fishing rod",
    "paint set",
    "sewing machine",
    "label printer",
    "desk organizer",
    "paper shredder",
    "stapler",
    "calculator",
    "baby monitor",
    "stroller",
    "car seat",
    "dog bed",
    "cat tree",
    "fish tank",
    "bird feeder",
    "lawn mower",
    "leaf blower",
    "cordless drill",
    "tool box",
    "ladder",
    "flashlight",
    "alarm clock",
    "hand mixer",
    "ice maker",
    "heated blanket",
    "massage gun",
    "projector",
    "smart speaker",
    "car charger",
    "dash cam",
    "board game",
    "puzzle",
    "kids tablet",
    "night light",
    "photo printer",
    "ukulele",
)
# Made-up names ("vobeku", "stanrovi pillow", "e-dazu"): no pool holds them, so copying them token by
# token from the message is the only way to get them right, which is what an unseen heldout product
# needs. Trained mostly on these, the adapter copies heldout products far more reliably than when real
# products dominate (first-token errors such as "webcam" -> "pr..." of "printer"): ~80 % vs ~70 %.
_NAME_CONSONANTS = "bdfgklmnprstvz"
_NAME_VOWELS = "aeiou"
_PRODUCT_MIX = (0.15, 0.1)  # train summary messages: P(split pool product), P(extra product); else a made-up one


def _made_up_word(rng: random.Random) -> str:
    """A pronounceable non-word; some start like a real product word and then diverge, some are
    hyphenated, so the adapter learns to copy what it reads instead of completing words it knows."""
    syllables = [rng.choice(_NAME_CONSONANTS) + rng.choice(_NAME_VOWELS) for _ in range(rng.randrange(2, 4))]
    if rng.random() < 0.4:
        syllables.append(rng.choice(_NAME_CONSONANTS))
    word = "".join(syllables)
    kind = rng.random()
    if kind < 0.35:  # real prefix, made-up ending: "stanrovi"
        real = rng.choice(TRAIN_EXTRA_PRODUCTS).split()[0]
        word = real[: rng.randrange(2, max(3, len(real)))] + word[2:]
    elif kind < 0.5:  # hyphenated: "e-zuvo", "kali-dob"
        word = rng.choice(("e", "x", "i", rng.choice(_NAME_CONSONANTS) + rng.choice(_NAME_VOWELS))) + "-" + word
    return word


def _train_product(rng: random.Random) -> str | None:
    """A train summary message's product; None means the demo's own train pool."""
    r = rng.random()
    if r < _PRODUCT_MIX[0]:
        return None
    if r < _PRODUCT_MIX[0] + _PRODUCT_MIX[1]:
        return rng.choice(TRAIN_EXTRA_PRODUCTS)
    words = [_made_up_word(rng) for _ in range(rng.randrange(1, 3))]
    if rng.random() < 0.5:  # a made-up brand of a real product
        words.append(rng.choice(TRAIN_EXTRA_PRODUCTS))
    return " ".join(words)


# Added when the intent clause has no product slot, so every summary message names its product.
_PRODUCT_SENTENCES = {
    "train": (
        "It's about my {product}.",
        "This concerns my {product}.",
        "Product: {product}.",
        "I bought the {product} from you.",
        "This is regarding my {product}.",
        "I have your {product}.",
    ),
    "heldout": ("It relates to my {product}.", "Item in question: {product}.", "I use your {product}."),
}


def summary_of(intent: str, product: str) -> str:
    """The gold summary of a message with ``intent`` that names ``product``."""
    if intent not in SUMMARY_TOPICS:
        raise ValueError(f"unknown intent {intent!r}; expected one of {INTENTS}")
    return f"{SUMMARY_TOPICS[intent]} about {product}"


# --------------------------------------------------------------------------- #
# Examples
# --------------------------------------------------------------------------- #


def instructions_for(task: str, split: str) -> tuple[str, ...]:
    """Instruction phrasings of ``task`` in ``split`` (train and heldout are disjoint)."""
    _check(task, split)
    return INSTRUCTIONS[task][split]


def _check(task: str, split: str) -> None:
    if task not in BYO_TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {BYO_TASKS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _example(task: str, rng: random.Random, split: str, i: int, instruction: str) -> Example:
    """Example ``i`` of a stream: labels cycle (priority levels, intents) so every class is balanced."""
    if task == "priority":
        level = PRIORITIES[i % len(PRIORITIES)]
        with_cue = level != "normal" or rng.random() < _NORMAL_CUE_RATE
        msg = make_message(rng, split, extra=(_cue_sentence(rng, level, split),) if with_cue else ())
        answer = priority_of(msg.text)
        if answer != level:  # the cue tables are inconsistent with PRIORITY_CUES: a bug, not a user error
            raise RuntimeError(f"generated a {level!r} message that priority_of reads as {answer!r}: {msg.text!r}")
    else:
        intent = INTENTS[i % len(INTENTS)]
        product = _train_product(rng) if split == "train" else None  # None: the split's pool
        msg = make_message(rng, split, intent=intent, product_sentences=_PRODUCT_SENTENCES[split], product=product)
        answer = summary_of(msg.intent, msg.product)
    first = rng.random() < INSTRUCTION_FIRST_RATE
    return Example.of(task, instruction, msg, answer, first)


def make_byo_examples(task: str, n: int, seed: int, split: str) -> list[Example]:
    """``n`` deterministic, label-balanced examples of ``task`` ("priority" or "summary") for ``split``.

    ``heldout`` draws instruction phrasings, message pools and cue/product sentences that ``train``
    never uses, from a disjoint RNG stream.
    """
    _check(task, split)
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed * 1_000_000_007 + _SPLIT_SALT[split] + _TASK_SALT[task])
    phrasings = instructions_for(task, split)
    out = [_example(task, rng, split, i, rng.choice(phrasings)) for i in range(n)]
    rng.shuffle(out)
    return out


def routing_examples(task: str, n: int = 8, seed: int = 0) -> list[str]:
    """``n`` example prompts of ``task`` for the router, the way a user would hand them over.

    Train phrasings and train messages only (the heldout ones stay unseen for the evaluation); the
    phrasings are all distinct while ``n`` does not exceed their number, then they repeat in a fresh
    order.
    """
    _check(task, "train")
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed * 1_000_000_007 + _ROUTING_SALT + _TASK_SALT[task])
    pool = list(instructions_for(task, "train"))
    phrasings: list[str] = []
    while len(phrasings) < n:
        rng.shuffle(pool)
        phrasings.extend(pool[: n - len(phrasings)])
    return [_example(task, rng, "train", i, phrasing).prompt for i, phrasing in enumerate(phrasings)]
