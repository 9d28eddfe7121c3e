"""Synthetic customer-support data for the embedded loraplex demo.

Pure Python (``random.Random(seed)``), no torch: the same ``(task, n, seed, split)``
always yields the same examples.

Prompt contract
---------------
Every request is a free-phrased *instruction* plus a customer *message*, rendered by
:func:`format_prompt` in one of two layouts::

    {instruction}\\n\\nMessage: {message}\\n\\nAnswer:          (instruction_first=True)
    Message: {message}\\n\\n{instruction}\\n\\nAnswer:          (instruction_first=False)

The prompt always ends with the fixed cue ``"\\n\\nAnswer:"`` (:data:`ANSWER_CUE`).
The model's completion is a single space, the answer, then EOS, e.g. ``" billing</s>"``.
Answers:

* ``intent``    -> exactly one of :data:`INTENTS`, e.g. ``order_status``
* ``sentiment`` -> exactly one of :data:`SENTIMENTS`, e.g. ``negative``
* ``entities``  -> ``json.dumps({"order_id": ..., "email": ...})`` with each value a
  string or ``null``, e.g. ``{"order_id": "ORD-48213", "email": null}``

Order ids look like ``ORD-48213`` (``ORD-`` + 5 digits); emails like
``jane.doe@example.com``. A message holds at most one of each.

Splits
------
``train`` and ``heldout`` use disjoint RNG streams and, on top of that, disjoint
*instruction phrasings* (the last ``HELDOUT_PHRASINGS`` of each task's list are
held-out only), disjoint customer names, products, greetings and sign-offs, so
held-out accuracy measures generalisation to unseen wording and unseen entities.

:func:`pretraining_corpus` produces generic support-domain text (messages, agent
replies, FAQ lines, notes that naturally repeat ids/emails) with *no* task
instructions and *no* task answers: the base model learns the language and to copy,
but cannot do the tasks on its own.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

INTENTS = (
    "reset_password",
    "billing",
    "order_status",
    "cancel_order",
    "technical_issue",
    "update_account",
)
SENTIMENTS = ("positive", "negative", "neutral")
TASKS = ("intent", "sentiment", "entities")
SPLITS = ("train", "heldout")

ANSWER_CUE = "\n\nAnswer:"
MESSAGE_LABEL = "Message: "
HELDOUT_PHRASINGS = 5  # per task, the last N phrasings are reserved for heldout

# Seed offsets keep the train and heldout RNG streams disjoint for any user seed.
_SPLIT_SALT = {"train": 1_000_003, "heldout": 7_000_001}
_TASK_SALT = {"intent": 11, "sentiment": 23, "entities": 37}

# --------------------------------------------------------------------------- #
# Instruction phrasings (the last HELDOUT_PHRASINGS of each list: heldout only)
# --------------------------------------------------------------------------- #

INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "intent": (
        "Classify the intent of this customer message.",
        "What is the customer asking for? Reply with the intent label.",
        "Identify the intent of the message below.",
        "Which intent best describes this support request?",
        "Label the customer's intent.",
        "Determine what the customer wants. Answer with one intent.",
        "Route this ticket: what is its intent?",
        "Give the intent category for this message.",
        "Read the message and output its intent.",
        "Pick the intent that matches this request.",
        "Tag this support message with its intent.",
        "What does this customer need? Give the intent.",
        "Assign an intent label to the following message.",
        "Intent classification: choose the correct intent.",
        "Categorize the request by intent.",
        "Tell me the intent of this ticket.",
        "Please classify what this customer is contacting us about.",
        "Decide which intent this message belongs to.",
        "Find the intent of the customer request.",
        "Which support intent fits this message best?",
        # heldout only
        "Figure out the purpose of this message and name the intent.",
        "For routing, return the intent of the customer's note.",
        "What kind of request is this? Respond with the intent label only.",
        "Sort this inquiry into its intent category.",
        "Name the customer's goal as an intent label.",
    ),
    "sentiment": (
        "What is the sentiment of this customer message?",
        "Classify the sentiment: positive, negative or neutral.",
        "Is the customer happy, upset, or neutral?",
        "Label the sentiment of the message below.",
        "Determine the tone of this message.",
        "How does the customer feel? Answer with the sentiment.",
        "Give the sentiment of the following support message.",
        "Sentiment analysis: classify this message.",
        "Read the message and output its sentiment.",
        "Rate the customer's mood as positive, negative or neutral.",
        "Tag this ticket with its sentiment.",
        "What emotion does this message express overall?",
        "Is this message positive, negative or neutral?",
        "Identify the sentiment expressed by the customer.",
        "Judge the sentiment of this request.",
        "Tell me whether the customer sounds positive, negative or neutral.",
        "Assess the customer's attitude in this message.",
        "Decide the sentiment label for this text.",
        "Classify how the customer feels about us.",
        "What is the overall tone of this ticket?",
        # heldout only
        "Estimate the customer's emotional tone and give the sentiment label.",
        "Does this note sound pleased, annoyed or matter-of-fact? Reply with the sentiment.",
        "Gauge the mood of the sender.",
        "For our satisfaction dashboard, label the sentiment of this message.",
        "How is the customer feeling here? One sentiment label please.",
    ),
    "entities": (
        "Extract the order id and email from this message as JSON.",
        "Find the order number and email address. Reply in JSON.",
        "Pull out the order_id and email fields from the message.",
        "Return a JSON object with the order id and the customer's email.",
        "Extract entities (order_id, email) from the customer message.",
        "What order id and email does the message mention? Use JSON, null if missing.",
        "Identify the order number and the email address, as JSON.",
        "Give me the order_id and email from this ticket in JSON format.",
        "Entity extraction: order id and email.",
        "List the order id and email address found in the message as JSON.",
        "Parse the message and output its order_id and email.",
        "Which order and which email are referenced? Answer with JSON.",
        "Extract the customer's order reference and contact email as JSON.",
        "Get the order id and email out of this text, null when absent.",
        "Output JSON with keys order_id and email for this message.",
        "Capture the order number and email from the ticket.",
        "Read the message and extract the order id and the email address.",
        "Return the order_id and email mentioned by the customer.",
        "Please extract structured fields (order_id, email) from this message.",
        "Find any order id and email address in this support message.",
        # heldout only
        "Locate the purchase reference and the contact address; reply as JSON.",
        "Fill in the order_id and email fields based on the text below.",
        "Scan this note for an order number and an email and return them in JSON.",
        "Give the structured entities of the message: order_id and email.",
        "Which order id and which email address appear here? JSON only.",
    ),
}

# --------------------------------------------------------------------------- #
# Vocabulary pools: (train pool, heldout-only pool)
# --------------------------------------------------------------------------- #

_FIRST = (
    "jane",
    "john",
    "maria",
    "david",
    "sarah",
    "michael",
    "emma",
    "liam",
    "olivia",
    "noah",
    "ava",
    "lucas",
    "mia",
    "ethan",
    "sofia",
    "james",
    "chloe",
    "daniel",
    "grace",
    "henry",
    "lily",
    "jack",
    "anna",
    "leo",
    "ruby",
    "oscar",
    "zoe",
    "adam",
    "nina",
    "paul",
    "laura",
    "peter",
    "alice",
    "tom",
    "kate",
    "sam",
    "rosa",
    "omar",
    "yuki",
    "ivan",
    "elena",
    "marco",
    "priya",
    "ahmed",
    "fatima",
    "chen",
    "hana",
    "diego",
    "lena",
    "max",
)
_FIRST_HELDOUT = (
    "clara",
    "felix",
    "nora",
    "hugo",
    "iris",
    "victor",
    "maya",
    "felipe",
    "tara",
    "bruno",
    "ines",
    "kenji",
    "selma",
    "arjun",
    "wanda",
)
_LAST = (
    "doe",
    "smith",
    "garcia",
    "brown",
    "miller",
    "wilson",
    "lopez",
    "clark",
    "lee",
    "walker",
    "hall",
    "young",
    "king",
    "wright",
    "scott",
    "green",
    "baker",
    "adams",
    "nelson",
    "hill",
    "moore",
    "taylor",
    "white",
    "harris",
    "martin",
    "thompson",
    "lewis",
    "allen",
    "wood",
    "gray",
    "reed",
    "cook",
    "bell",
    "murphy",
    "rivera",
    "kim",
    "patel",
    "nguyen",
    "kowalski",
    "rossi",
    "silva",
    "novak",
    "jensen",
    "fischer",
    "dubois",
    "tanaka",
    "singh",
    "costa",
    "berg",
    "moreau",
)
_LAST_HELDOUT = (
    "vance",
    "okafor",
    "lindqvist",
    "petrov",
    "haddad",
    "ferreira",
    "brennan",
    "yilmaz",
    "sato",
    "oconnor",
    "schmidt",
    "mendes",
    "quinn",
    "varga",
    "holt",
)
_DOMAINS = (
    "example.com",
    "example.org",
    "mail.com",
    "inbox.net",
    "post.io",
    "shop.net",
    "webmail.com",
    "company.com",
    "fastmail.net",
    "home.org",
)
_DOMAINS_HELDOUT = ("letters.io", "mailbox.org", "corp.net")

_PRODUCTS = (
    "wireless headphones",
    "laptop stand",
    "coffee maker",
    "running shoes",
    "smart watch",
    "phone case",
    "desk lamp",
    "backpack",
    "bluetooth speaker",
    "yoga mat",
    "water bottle",
    "gaming mouse",
    "mechanical keyboard",
    "air fryer",
    "winter jacket",
    "tablet",
    "office chair",
    "blender",
    "camera lens",
    "sunglasses",
    "electric kettle",
    "monitor",
    "vacuum cleaner",
    "hair dryer",
    "router",
    "printer",
    "smart bulb",
    "fitness tracker",
    "travel mug",
    "rain boots",
)
_PRODUCTS_HELDOUT = (
    "espresso grinder",
    "standing desk",
    "noise cancelling earbuds",
    "tent",
    "robot vacuum",
    "webcam",
    "e-reader",
    "ceiling fan",
)

_GREETINGS = (
    "Hi,",
    "Hello,",
    "Hey there,",
    "Hi team,",
    "Dear support,",
    "Hello support team,",
    "Good morning,",
    "Hi there,",
    "Greetings,",
    "Hey,",
)
_GREETINGS_HELDOUT = ("Good afternoon,", "To whom it may concern,", "Hiya,")

_SIGNOFFS = ("Regards,", "Best,", "Cheers,", "Sincerely,", "Kind regards,", "Best wishes,", "Thanks,")
_SIGNOFFS_HELDOUT = ("Yours,", "All the best,", "Warm regards,")

# --------------------------------------------------------------------------- #
# Message building blocks
# --------------------------------------------------------------------------- #

# Intent clauses. Slots: {product}; "{order}" marks where an order id goes when the
# message carries one (clauses containing {order} are only used with an order id).
_INTENT_CLAUSES: dict[str, tuple[str, ...]] = {
    "reset_password": (
        "I forgot my password and can't log in.",
        "How do I reset my password?",
        "The password reset link never arrives.",
        "I'm locked out of my account and need a new password.",
        "Please help me change my password, I can't remember it.",
        "My password doesn't work anymore, can you reset it?",
        "I keep getting 'wrong password' when I try to sign in.",
        "Can you send me a password reset link?",
        "I need to reset the password for my account.",
        "I can't sign in because I lost my password.",
        "The reset password page says my link has expired.",
        "How can I recover my password? I can't get into my account.",
    ),
    "billing": (
        "I was charged twice for my {product}.",
        "There is an unexpected charge on my credit card.",
        "Can you explain the charges on my latest invoice?",
        "I need a refund for the duplicate payment.",
        "Why was I billed for {order}?",
        "My card was charged the wrong amount for {order}.",
        "I see a charge I don't recognize on my bank statement.",
        "Please send me a copy of the invoice for my {product}.",
        "The discount code was not applied to my bill.",
        "I was billed after my subscription ended.",
        "Can I change the payment method on my billing account?",
        "The price on my receipt is higher than the price on the website.",
    ),
    "order_status": (
        "Where is my order {order}?",
        "When will my {product} arrive?",
        "Has my {product} shipped yet?",
        "Can you track order {order} for me?",
        "My package still hasn't arrived.",
        "What's the delivery status of {order}?",
        "The tracking page for my {product} hasn't updated in days.",
        "Can you tell me when {order} will be delivered?",
        "Is my order on its way?",
        "I'm waiting for my {product}, what is the estimated delivery date?",
        "Could you check the shipping status of my order?",
        "It says {order} is out for delivery but nothing came.",
    ),
    "cancel_order": (
        "Please cancel my order {order}.",
        "I want to cancel the {product} I ordered.",
        "I no longer need the {product}, please cancel the order.",
        "Can you stop {order} before it ships?",
        "I ordered the wrong {product} by mistake, cancel it please.",
        "Cancel order {order}, I found it cheaper elsewhere.",
        "How do I cancel an order I placed yesterday?",
        "I changed my mind about the {product}, please cancel it.",
        "Please cancel {order} and don't ship it.",
        "I need to cancel my purchase of the {product}.",
        "Is it too late to cancel my order?",
        "I'd like to cancel the order I just placed.",
    ),
    "technical_issue": (
        "The app keeps crashing when I open it.",
        "My {product} won't turn on.",
        "The website shows an error at checkout.",
        "My {product} stopped connecting to wifi.",
        "I get an error message every time I try to log in to the app.",
        "The {product} makes a strange noise and then shuts off.",
        "The page freezes when I click the buy button.",
        "The firmware update failed on my {product}.",
        "The mobile app won't load my order history.",
        "My {product} keeps disconnecting from bluetooth.",
        "The screen on my {product} flickers and goes black.",
        "I can't upload a photo, the site says server error 500.",
    ),
    "update_account": (
        "I need to change the email on my account.",
        "Please update my shipping address.",
        "How do I change the phone number on my profile?",
        "Can you update the name on my account?",
        "I moved, please change my address on file.",
        "I want to update my contact details.",
        "Please change my account email to a new one.",
        "Can I change my username?",
        "I need to update my billing address in my profile.",
        "Please switch my account to my new phone number.",
        "How can I edit my profile information?",
        "Update my account preferences so I get fewer newsletters.",
    ),
}

_POSITIVE = (
    "I love your products!",
    "Thanks so much, you guys are great.",
    "Your service has always been excellent.",
    "I'm really happy with my purchase so far.",
    "You have been super helpful, thank you!",
    "Great job on the fast delivery last time.",
    "I really appreciate your help, you're wonderful.",
    "Amazing support as always, thank you!",
    "I'm a very satisfied customer.",
    "Everything else has been fantastic, thanks!",
    "Your team is awesome.",
    "Thank you, I'm so pleased with your shop.",
)
_NEGATIVE = (
    "This is really frustrating.",
    "I'm very disappointed with your service.",
    "Terrible experience so far.",
    "I'm angry, this is the third time I've asked.",
    "This is unacceptable.",
    "Honestly, I'm fed up with this.",
    "Your support has been awful.",
    "I'm extremely annoyed and upset.",
    "Worst customer service I've ever had.",
    "I'm really unhappy about this.",
    "This is ridiculous and a total waste of my time.",
    "I regret ordering from you.",
)
_NEUTRAL = (
    "Quick question.",
    "Details are below.",
    "I'm writing about my account.",
    "Let me know what you need from me.",
    "Please advise.",
    "Looking forward to your reply.",
    "Here is the information.",
    "I have a question about this.",
)

_ORDER_SENTENCES = (
    "My order number is {order}.",
    "The order id is {order}.",
    "Order: {order}.",
    "Reference {order}.",
    "This is about order {order}.",
    "(order {order})",
    "It's order {order}.",
    "Order number {order} for reference.",
)
_EMAIL_SENTENCES = (
    "My email is {email}.",
    "You can reach me at {email}.",
    "Please reply to {email}.",
    "My account email is {email}.",
    "Contact me at {email}.",
    "Email: {email}",
    "I registered with {email}.",
    "Send updates to {email}.",
)
# Numbers that are NOT order ids (noise for the entity task).
_NOISE = (
    "I paid ${amount}.",
    "It cost ${amount} in total.",
    "I called {phone} yesterday.",
    "My phone is {phone}.",
    "I ordered {count} of them.",
    "It has been {count} days.",
)


@dataclass(frozen=True)
class Example:
    """One supervised request: ``prompt`` -> ``" " + answer + EOS``."""

    task: str
    instruction: str
    message: str
    prompt: str
    answer: str
    intent: str
    sentiment: str
    order_id: str | None
    email: str | None
    instruction_first: bool

    @classmethod
    def of(cls, task: str, instruction: str, msg: CustomerMessage, answer: str, first: bool) -> Example:
        """The example asking `instruction` about `msg` (instruction before the message when `first`)."""
        return cls(
            task=task,
            instruction=instruction,
            message=msg.text,
            prompt=format_prompt(instruction, msg.text, first),
            answer=answer,
            intent=msg.intent,
            sentiment=msg.sentiment,
            order_id=msg.order_id,
            email=msg.email,
            instruction_first=first,
        )


def format_prompt(instruction: str, message: str, instruction_first: bool = True) -> str:
    """Render the prompt contract (see module docstring); ends with ``"\\n\\nAnswer:"``."""
    instruction = instruction.strip()
    message = message.strip()
    if instruction_first:
        return f"{instruction}\n\n{MESSAGE_LABEL}{message}{ANSWER_CUE}"
    return f"{MESSAGE_LABEL}{message}\n\n{instruction}{ANSWER_CUE}"


def entities_answer(order_id: str | None, email: str | None) -> str:
    """The exact gold string for the entities task."""
    return json.dumps({"order_id": order_id, "email": email})


def instructions_for(task: str, split: str) -> tuple[str, ...]:
    """Instruction phrasings available to ``task`` in ``split``."""
    _check(task, split)
    phrasings = INSTRUCTIONS[task]
    if split == "train":
        return phrasings[:-HELDOUT_PHRASINGS]
    return phrasings[-HELDOUT_PHRASINGS:]


def _check(task: str, split: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


class _Pools:
    def __init__(self, split: str):
        held = split == "heldout"
        self.casual = split  # which share of the casual clauses and cues (see _casual_part)
        self.first = _FIRST_HELDOUT if held else _FIRST
        self.last = _LAST_HELDOUT if held else _LAST
        self.domains = _DOMAINS + _DOMAINS_HELDOUT if held else _DOMAINS
        self.products = _PRODUCTS_HELDOUT if held else _PRODUCTS
        self.greetings = _GREETINGS_HELDOUT if held else _GREETINGS
        self.signoffs = _SIGNOFFS_HELDOUT if held else _SIGNOFFS


_ALL_POOLS = None  # lazily built pool with everything (pretraining)


def _all_pools() -> _Pools:
    global _ALL_POOLS
    if _ALL_POOLS is None:
        p = _Pools("train")
        p.first = _FIRST + _FIRST_HELDOUT
        p.last = _LAST + _LAST_HELDOUT
        p.domains = _DOMAINS + _DOMAINS_HELDOUT
        p.products = _PRODUCTS + _PRODUCTS_HELDOUT
        p.greetings = _GREETINGS + _GREETINGS_HELDOUT
        p.signoffs = _SIGNOFFS + _SIGNOFFS_HELDOUT
        p.casual = "all"
        _ALL_POOLS = p
    return _ALL_POOLS


def _order_id(rng: random.Random) -> str:
    return f"ORD-{rng.randrange(10000, 100000)}"


def _email(rng: random.Random, first: str, last: str, pools: _Pools) -> str:
    domain = rng.choice(pools.domains)
    style = rng.randrange(6)
    if style == 0:
        local = f"{first}{last}"
    elif style == 1:
        local = f"{first[0]}{last}"
    elif style == 2:
        local = f"{first}_{last}"
    elif style == 3:
        local = f"{first}.{last}{rng.randrange(1, 100)}"
    elif style == 4:
        local = f"{first}{rng.randrange(1, 1000)}"
    else:
        local = f"{first}.{last}"
    return f"{local}@{domain}"


def _display(name: str) -> str:
    return name[:1].upper() + name[1:]


def _noise(rng: random.Random) -> str:
    template = rng.choice(_NOISE)
    return template.format(
        amount=f"{rng.randrange(5, 500)}.{rng.randrange(0, 100):02d}",
        phone=f"555-{rng.randrange(1000, 10000)}",
        count=rng.randrange(2, 12),
    )


@dataclass(frozen=True)
class CustomerMessage:
    """One generated customer message and the facts it was built from (the gold for every task)."""

    text: str
    intent: str
    sentiment: str
    order_id: str | None
    email: str | None
    first: str
    last: str
    product: str


def _make_message(
    rng: random.Random,
    pools: _Pools,
    intent: str | None = None,
    sentiment: str | None = None,
    extra: Sequence[str] = (),
    product_sentences: Sequence[str] = (),
    product: str | None = None,
) -> CustomerMessage:
    intent = intent or rng.choice(INTENTS)
    sentiment = sentiment or rng.choice(SENTIMENTS)
    first, last = rng.choice(pools.first), rng.choice(pools.last)
    product = product if product is not None else rng.choice(pools.products)
    order_id = _order_id(rng) if rng.random() < 0.55 else None
    email = _email(rng, first, last, pools) if rng.random() < 0.5 else None

    clauses = _INTENT_CLAUSES[intent]
    if order_id is None:
        clauses = tuple(c for c in clauses if "{order}" not in c)
    clause = rng.choice(clauses)
    order_in_clause = "{order}" in clause
    body = [clause.format(product=product, order=order_id)]

    # Extra sentences in random order: entity carriers and noise.
    extras: list[str] = []
    if order_id is not None and not order_in_clause:
        extras.append(rng.choice(_ORDER_SENTENCES).format(order=order_id))
    email_in_signature = email is not None and rng.random() < 0.3
    if email is not None and not email_in_signature:
        extras.append(rng.choice(_EMAIL_SENTENCES).format(email=email))
    if rng.random() < 0.25:
        extras.append(_noise(rng))
    # Caller-supplied sentences (none for the demo tasks, so their RNG stream is unchanged).
    if product_sentences and "{product}" not in clause:
        extras.append(rng.choice(product_sentences).format(product=product))
    extras.extend(extra)
    rng.shuffle(extras)
    body.extend(extras)

    # Sentiment cues: opener and/or closer.
    if sentiment == "positive":
        cue_pool = _POSITIVE
    elif sentiment == "negative":
        cue_pool = _NEGATIVE
    else:
        cue_pool = _NEUTRAL
    r = rng.random()
    if sentiment == "neutral" and r < 0.4:
        pass  # neutral messages often carry no cue at all
    elif r < 0.45:
        body.insert(0, rng.choice(cue_pool))
    elif r < 0.85:
        body.append(rng.choice(cue_pool))
    else:
        a, b = rng.sample(cue_pool, 2)
        body.insert(0, a)
        body.append(b)

    parts: list[str] = []
    if rng.random() < 0.6:
        parts.append(rng.choice(pools.greetings))
    parts.append(" ".join(body))
    if email_in_signature or rng.random() < 0.4:
        sig = f"{rng.choice(pools.signoffs)} {_display(first)}"
        if rng.random() < 0.6:
            sig += f" {_display(last)}"
        if email_in_signature:
            sig += f", {email}"
        parts.append(sig)
    text = " ".join(parts) if rng.random() < 0.5 else "\n".join(parts)
    return CustomerMessage(text, intent, sentiment, order_id, email, first, last, product)


def make_message(
    rng: random.Random,
    split: str,
    intent: str | None = None,
    sentiment: str | None = None,
    extra: Sequence[str] = (),
    product_sentences: Sequence[str] = (),
    product: str | None = None,
) -> CustomerMessage:
    """One customer message drawn from ``split``'s pools (names, products, greetings, sign-offs).

    Public so that other task generators (e.g. :mod:`loraplex.demo.byo_tasks`) build on the same
    messages and the same train/heldout pool split as the demo tasks. ``extra`` sentences are mixed in
    with the message's other extra sentences (order id, email, noise); ``product_sentences`` (templates
    with a ``{product}`` slot), when given, guarantee the product is named even if the intent clause
    does not mention it; ``product`` replaces the pool's product (a task that must *copy* the product
    needs more products than the pools hold, or its adapter memorises them). With all three left at
    their defaults the draw is exactly the one :func:`make_examples` makes.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if intent is not None and intent not in INTENTS:
        raise ValueError(f"unknown intent {intent!r}; expected one of {INTENTS}")
    if sentiment is not None and sentiment not in SENTIMENTS:
        raise ValueError(f"unknown sentiment {sentiment!r}; expected one of {SENTIMENTS}")
    return _make_message(rng, _Pools(split), intent, sentiment, tuple(extra), tuple(product_sentences), product)


def make_examples(task: str, n: int, seed: int, split: str) -> list[Example]:
    """``n`` deterministic examples of ``task`` for ``split`` ("train" or "heldout").

    Labels are balanced by cycling through the label set (intent/sentiment); the
    heldout split uses a disjoint RNG stream plus heldout-only phrasings, names,
    products, greetings and sign-offs.
    """
    _check(task, split)
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed * 1_000_000_007 + _SPLIT_SALT[split] + _TASK_SALT[task])
    pools = _Pools(split)
    phrasings = instructions_for(task, split)
    out: list[Example] = []
    for i in range(n):
        intent = INTENTS[i % len(INTENTS)] if task == "intent" else None
        sentiment = SENTIMENTS[i % len(SENTIMENTS)] if task == "sentiment" else None
        msg = _make_message(rng, pools, intent=intent, sentiment=sentiment)
        instruction = rng.choice(phrasings)
        first = rng.random() < 0.7
        if task == "intent":
            answer = msg.intent
        elif task == "sentiment":
            answer = msg.sentiment
        else:
            answer = entities_answer(msg.order_id, msg.email)
        out.append(Example.of(task, instruction, msg, answer, first))
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------- #
# Casual messages (issue 13): how people type into a chat box, not how the templates write
# --------------------------------------------------------------------------- #

# Short, informal clauses in first and third person ("they were charged twice": an agent
# forwarding a ticket). Slots as in _INTENT_CLAUSES.
_CASUAL_CLAUSES: dict[str, tuple[str, ...]] = {
    "reset_password": (
        "forgot my password",
        "cant log in, forgot the password",
        "how do i reset my pw",
        "the reset link isnt working",
        "the password reset mail never came",
        "locked out of my account again",
        "need a new password asap",
        "my login code never arrives",
        "password not accepted anymore",
        "it keeps saying my password is wrong",
        "they forgot their password and cant sign in",
        "customer is locked out and wants a reset link",
        "reset email expired before i clicked it",
        "i cant get into my account, can you reset the password",
        "the sign in page wont take my password",
        "lost access to my account, need to reset my login",
    ),
    "billing": (
        "charged twice for the {product}",
        "what is this extra charge on my credit card statement",
        "i want my money back for {order}",
        "refund please, you billed me double",
        "the invoice amount is wrong",
        "i got billed after i cancelled my plan",
        "there's a fee on my statement i dont understand",
        "need a receipt for {order}",
        "they were charged two times for one order",
        "customer says the coupon didnt come off the price",
        "my card got charged but the payment shows failed",
        "can i pay with a different card",
        "you took money from my account twice",
        "the price i paid for {order} is more than the site said",
        "where is my refund for the {product}",
        "subscription renewed and charged me without asking",
    ),
    "order_status": (
        "where is my package",
        "wheres my {product}",
        "has {order} shipped",
        "my delivery is late",
        "tracking hasnt moved in a week",
        "any update on {order}",
        "still waiting for the {product}",
        "when does my parcel arrive",
        "they are asking where their order is",
        "customer wants to know when {order} gets delivered",
        "the courier says delivered but nothing here",
        "is the {product} on the way or not",
        "my order is stuck on processing",
        "how long until {order} shows up",
        "no sign of my shipment yet",
        "my order was supposed to come yesterday",
    ),
    "cancel_order": (
        "cancel {order} please",
        "i dont want the {product} anymore, cancel it",
        "please stop my order before it ships",
        "changed my mind, cancel the order",
        "can you call off {order}",
        "want to cancel what i just bought",
        "ordered the wrong size, cancel please",
        "they want to cancel their order",
        "customer asks us to cancel {order}",
        "undo my last order",
        "kill the order for the {product}",
        "i need to cancel before it leaves the warehouse",
        "found it cheaper, cancel {order}",
        "please dont ship the {product}, i want to cancel",
        "can i still cancel my purchase",
        "cancel the order i placed this morning",
    ),
    "technical_issue": (
        "the app keeps crashing",
        "site wont load",
        "my {product} stopped working",
        "getting an error when i pay",
        "the {product} wont connect to wifi",
        "page is stuck loading forever",
        "bug in the checkout, button does nothing",
        "the screen goes black on my {product}",
        "they say the app hangs right after launch",
        "customer reports the {product} keeps rebooting",
        "error 500 on the website",
        "the update broke my {product}",
        "cant upload anything, it just fails",
        "the {product} is broken out of the box",
        "app crashes whenever i open settings",
        "nothing happens when i press the power button on the {product}",
    ),
    "update_account": (
        "need to change my email address",
        "please update my address, i moved",
        "change the phone number on my profile",
        "wrong name on my account, can you fix it",
        "how do i edit my details",
        "update my shipping address please",
        "switch my account to a new email",
        "they want to change the address on file",
        "customer needs the phone number on the account updated",
        "can i change my username",
        "my last name changed, update my profile",
        "please change the contact email on my account",
        "new address for my account",
        "edit the billing address on my profile",
        "turn off the newsletters in my account settings",
        "i want to update my account info",
    ),
}
_CASUAL_POSITIVE = (
    "love you guys",
    "you're amazing!",
    "thanks a ton, great service",
    "really happy with you so far :)",
    "awesome support as always",
    "big fan of your shop",
    "you guys rock",
    "so pleased with everything else",
    "great job last time, thanks!",
    "amazing, thank you!!",
    "much appreciated, you've been great",
    "favourite shop ever",
)
_CASUAL_NEGATIVE = (
    "this is so annoying",
    "ugh, worst service ever",
    "really not happy about this",
    "seriously fed up",
    "this is a joke",
    "i'm furious",
    "so disappointed :(",
    "what a mess",
    "sick of waiting",
    "never ordering again",
    "absolutely terrible",
    "this is the third time, unacceptable!!",
)
_CASUAL_NEUTRAL = (
    "fyi",
    "no rush",
    "just checking",
    "when you get a chance",
    "quick question",
    "let me know",
    "thanks",
    "see details",
)
# Compositional cues: subject + intensifier + adjective ("honestly so grateful"), hundreds per polarity.
_CUE_SUBJECTS = ("i'm", "i am", "we're", "honestly", "tbh i'm", "i feel", "really", "")
_CUE_INTENSIFIERS = ("so", "really", "very", "super", "extremely", "totally", "beyond", "pretty", "")
_CUE_ADJECTIVES = {
    "positive": (
        "happy",
        "pleased",
        "glad",
        "grateful",
        "thrilled",
        "impressed",
        "satisfied",
        "delighted",
        "thankful",
        "excited",
    ),
    "negative": (
        "annoyed",
        "angry",
        "upset",
        "frustrated",
        "disappointed",
        "furious",
        "mad",
        "unhappy",
        "irritated",
        "fed up",
    ),
}
_CUE_PHRASES = {
    "positive": (
        "thanks a million",
        "great stuff",
        "5 stars from me",
        "brilliant work so far",
        "keep it up",
        "lovely service",
        "you made my day",
        "super helpful team",
        "really nice experience",
        "big thanks",
    ),
    "negative": (
        "this sucks",
        "ridiculous",
        "what a waste of time",
        "1 star",
        "not ok at all",
        "i hate this",
        "completely unacceptable",
        "awful experience",
        "worst shop ever",
        "so done with you",
    ),
}
_POSITIVE_EMOTES = (" :)", " :D", " <3", "!!")
_NEGATIVE_EMOTES = (" :(", " >:(", "!!!", " ugh")


def _sentiment_cue(rng: random.Random, sentiment: str, which: str) -> str:
    """A casual mood cue: a fixed phrase, or subject + intensifier + adjective, now and then an emoticon."""
    fixed = {"positive": _CASUAL_POSITIVE, "negative": _CASUAL_NEGATIVE, "neutral": _CASUAL_NEUTRAL}[sentiment]
    if sentiment == "neutral" or rng.random() < 0.4:
        return rng.choice(_casual_part(fixed, which))
    if rng.random() < 0.4:
        cue = rng.choice(_casual_part(_CUE_PHRASES[sentiment], which))
    else:
        words = (
            rng.choice(_CUE_SUBJECTS),
            rng.choice(_CUE_INTENSIFIERS),
            rng.choice(_casual_part(_CUE_ADJECTIVES[sentiment], which)),
        )
        cue = " ".join(w for w in words if w)
    if rng.random() < 0.25:
        cue += rng.choice(_POSITIVE_EMOTES if sentiment == "positive" else _NEGATIVE_EMOTES)
    return cue


_CASUAL_ORDER = (
    "order {order}",
    "it's {order}",
    "#{order}",
    "ref {order}",
    "({order})",
    "order no. {order}",
    "the order is {order}",
    "order number: {order}",
)
_CASUAL_EMAIL = (
    "my email is {email}",
    "email me at {email}",
    "i'm {email}",
    "account: {email}",
    "reach me on {email}",
    "{email}",
    "write to {email}",
    "my login is {email}",
)
_CASUAL_GREETINGS = ("hey", "hi", "hello", "hi there", "yo", "good morning", "hey team")
_CASUAL_SIGNOFFS = ("thx", "thanks", "- {name}", "cheers, {name}", "ty", "{name}")


# Compositional clauses: a few slots per intent, each with synonyms, so a casual message can say the
# same request in thousands of ways ("any news on my parcel, been 9 days"). Every fifth synonym of
# every slot is held-out only (_casual_part), so held-out messages combine words training never paired.
_COMPOSED: dict[str, tuple[tuple[str, ...], ...]] = {
    "reset_password": (
        ("i cant", "can't", "unable to", "i'm not able to", "still cant", "trying to", "i cannot", "won't let me"),
        ("log in", "sign in", "get into my account", "access my account", "login", "get past the login screen"),
        (
            ", forgot my password",
            ", my reset link expired",
            ", the reset code never arrives",
            ", it says wrong password",
            "",
            ", need a password reset",
            ", lost my password",
            ", the password reset page errors",
            ", please reset my password",
            ", forgot the password again",
        ),
    ),
    "billing": (
        ("i was charged", "you charged me", "got billed", "i paid", "my card was charged", "i've been charged"),
        ("twice", "double", "too much", "the wrong amount", "an extra fee", "again", "two times", "way more"),
        (
            " for my {product}",
            " for one order",
            " for {order}",
            " this month",
            " for my subscription",
            "",
            ", refund please",
            ", i want my money back",
            ", send me a refund",
            ", check my invoice",
        ),
    ),
    "order_status": (
        (
            "where is",
            "wheres",
            "where's",
            "any news on",
            "any update on",
            "status of",
            "what happened to",
            "still waiting on",
            "no sign of",
            "tracking for",
        ),
        ("my package", "my parcel", "my delivery", "my shipment", "my order", "the {product}", "{order}", "my box"),
        (
            "",
            ", it was due {day}",
            ", it should have arrived {day}",
            " - been {n} days",
            ", tracking hasnt updated",
            ", still not here",
            "?",
            ", when will it arrive",
            ", has it shipped yet",
            ", the courier never came",
        ),
    ),
    "cancel_order": (
        (
            "cancel",
            "please cancel",
            "can you cancel",
            "i want to cancel",
            "stop",
            "call off",
            "dont ship",
            "scrap",
            "i'd like to cancel",
            "pls cancel",
        ),
        (
            "my order",
            "{order}",
            "the {product} i ordered",
            "my purchase",
            "the order",
            "it",
            "that order",
            "my last order",
        ),
        (
            "",
            ", changed my mind",
            ", ordered by mistake",
            ", found it cheaper",
            ", dont need it anymore",
            ", it's taking too long",
            " before it ships",
            " asap",
            ", wrong item",
            ", no longer needed",
        ),
    ),
    "technical_issue": (
        (
            "the app",
            "the website",
            "my {product}",
            "the login form",
            "the mobile app",
            "the order history page",
            "the search bar",
            "your site",
            "the {product}",
            "the payment page",
        ),
        (
            "keeps crashing",
            "wont load",
            "freezes",
            "shows an error",
            "stopped working",
            "is broken",
            "wont turn on",
            "keeps disconnecting",
            "is glitching",
            "throws a server error",
        ),
        (
            "",
            " when i open it",
            " at random",
            " since the update",
            " after a week",
            " on my phone",
            " again",
            " on every browser",
        ),
    ),
    "update_account": (
        ("change", "update", "edit", "fix", "correct", "switch", "please change", "pls update"),
        (
            "the email",
            "the address",
            "the phone number",
            "the name",
            "the shipping address",
            "the billing address",
            "the username",
            "the contact details",
        ),
        (
            " on my account",
            " on my profile",
            " in my account settings",
            " on file",
            " for my account",
        ),
        (
            "",
            ", i moved",
            ", it's wrong",
            ", i have a new one",
            ", it changed",
            ", got married",
            ", new number",
            ", typo in it",
        ),
    ),
}
_DAYS = ("monday", "tuesday", "yesterday", "last week", "on friday", "two days ago")


def _composed_clause(rng: random.Random, intent: str, which: str, product: str, order: str | None) -> str:
    """One clause of ``intent`` from its slots; an ``{order}`` synonym is skipped when there is no order id."""
    words = []
    for slot in _COMPOSED[intent]:
        options = _casual_part(slot, which)
        if order is None:
            options = tuple(o for o in options if "{order}" not in o) or options[:1]
        words.append(rng.choice(options))
    text = " ".join(words).replace(" ,", ",").replace(" ?", "?").replace("  ", " ").strip()
    return text.format(product=product, order=order, day=rng.choice(_DAYS), n=rng.randrange(3, 15))


def make_casual_message(
    rng: random.Random, split: str, intent: str | None = None, sentiment: str | None = None, every_part: bool = False
) -> CustomerMessage:
    """One short, informal message (``"hey wheres my blender, order ORD-12345. thx"``) from ``split``'s
    name and product pools: the chat-box register the templates of :func:`make_message` never use.
    Ids and emails are copied verbatim (never re-cased), so the entities answer stays exact.
    ``every_part`` also draws the clauses and cues held out for ``heldout`` (names and products stay
    ``split``'s): the shipped build trains on them once its settings were chosen without them."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    pools = _Pools(split)
    if every_part:
        pools.casual = "all"
    return _make_casual(rng, pools, intent, sentiment)


@functools.cache  # called several times per casual message on the same few tuples
def _casual_part(items: tuple[str, ...], which: str) -> tuple[str, ...]:
    """Every fifth casual clause or cue is held-out only, so held-out casual messages say new things."""
    if which == "all":
        return items
    return tuple(x for i, x in enumerate(items) if (i % 5 == 4) == (which == "heldout"))


def _make_casual(rng: random.Random, pools: _Pools, intent: str | None, sentiment: str | None) -> CustomerMessage:
    intent = intent or rng.choice(INTENTS)
    sentiment = sentiment or rng.choice(SENTIMENTS)
    first, last = rng.choice(pools.first), rng.choice(pools.last)
    product = rng.choice(pools.products)
    order_id = _order_id(rng) if rng.random() < 0.5 else None
    email = _email(rng, first, last, pools) if rng.random() < 0.45 else None
    if rng.random() < 0.5:
        clause = _composed_clause(rng, intent, pools.casual, product, order_id)
    else:
        clauses = _casual_part(_CASUAL_CLAUSES[intent], pools.casual)
        if order_id is None:
            clauses = tuple(c for c in clauses if "{order}" not in c)
        clause = rng.choice(clauses).format(product=product, order=order_id)
    body = [clause]
    extras = []
    if order_id is not None and order_id not in clause:
        extras.append(rng.choice(_CASUAL_ORDER).format(order=order_id))
    if email is not None:
        extras.append(rng.choice(_CASUAL_EMAIL).format(email=email))
    rng.shuffle(extras)
    body += extras
    if not (sentiment == "neutral" and rng.random() < 0.5):
        body.insert(0 if rng.random() < 0.4 else len(body), _sentiment_cue(rng, sentiment, pools.casual))
    if rng.random() < 0.4:
        body.insert(0, rng.choice(_CASUAL_GREETINGS))
    if rng.random() < 0.3:
        body.append(rng.choice(_CASUAL_SIGNOFFS).format(name=_display(first)))
    sep = rng.choice((", ", ". ", " ", " - ", "\n"))
    text = sep.join(body)
    if rng.random() < 0.35:
        text = text[:1].upper() + text[1:]
    if rng.random() < 0.3 and not text.endswith(("!", "?", ")", ".")):
        text += rng.choice(("!", "?", ".", "!!", "??"))
    return CustomerMessage(text, intent, sentiment, order_id, email, first, last, product)


# --------------------------------------------------------------------------- #
# Pretraining corpus
# --------------------------------------------------------------------------- #

_AGENT_OPENERS = (
    "Hi {name}, thanks for reaching out.",
    "Hello {name}, thank you for contacting us.",
    "Dear {name}, thanks for your message.",
    "Hello {name}, we're happy to help.",
    "Hi {name},",
)
# The agent's tone mirrors the customer's mood (so the base model learns to track it).
_AGENT_TONE: dict[str, tuple[str, ...]] = {
    "positive": (
        "Thank you for the kind words!",
        "We're so glad you're happy with us!",
        "It's great to hear you're enjoying our service!",
        "Thanks, your feedback made our day!",
    ),
    "negative": (
        "I'm very sorry about the frustration.",
        "We apologize, this should not have happened.",
        "I understand you're upset and I'm sorry.",
        "Sorry for the bad experience, let me fix it.",
    ),
    "neutral": (
        "Here is what I found.",
        "Let me take a look.",
        "I checked this for you.",
        "Here is an update.",
    ),
}
_AGENT_BODIES: dict[str, tuple[str, ...]] = {
    "reset_password": (
        "We have sent a password reset link to {email_or_you}.",
        "You can reset your password from the sign in page by clicking forgot password.",
        "Your old password has been cleared, please choose a new one.",
    ),
    "billing": (
        "We refunded the duplicate charge and you will see it in three to five days.",
        "The invoice for your {product} is attached.",
        "We checked the payment and corrected the amount.",
    ),
    "order_status": (
        "Your {product} is on its way and should arrive on Friday.",
        "The package left our warehouse this morning.",
        "Tracking shows the courier will deliver it tomorrow.",
    ),
    "cancel_order": (
        "We cancelled the order and you will not be charged.",
        "The {product} will not ship, the order is now cancelled.",
        "Your cancellation is confirmed.",
    ),
    "technical_issue": (
        "Please restart the {product} and install the latest update.",
        "Our engineers fixed the bug, please try again.",
        "Clearing the app cache usually solves this problem.",
    ),
    "update_account": (
        "Your profile has been updated.",
        "We changed the details on your account as requested.",
        "The new address is saved on your account.",
    ),
}
_AGENT_CLOSERS = (
    "Best regards, the support team.",
    "Have a great day!",
    "Let us know if there is anything else.",
    "Kind regards, customer care.",
    "We are here if you need anything.",
)
_FAQ = (
    "Q: How do I reset my password? A: Click forgot password on the sign in page and follow the link we email you.",
    "Q: Where can I see my order status? A: Open your account and choose orders, then tracking.",
    "Q: How do I cancel an order? A: Orders can be cancelled before they ship from the orders page.",
    "Q: Why was I charged twice? A: A temporary hold can look like a second charge, it disappears in a few days.",
    "Q: How do I update my address? A: Go to profile, edit the address and save.",
    "Q: The app crashes, what can I do? A: Update the app, restart your phone and try again.",
    "Q: Can I get an invoice? A: Invoices are in the billing section of your account.",
    "Q: How long does delivery take? A: Most orders arrive within three to five business days.",
    "Q: Can I change my email? A: Yes, open account settings and change the email address.",
    "Q: How do refunds work? A: Refunds go back to the original payment method.",
    "Q: Who handles billing questions? A: Our billing team answers billing questions every weekday.",
    "Q: Who fixes a technical problem? A: Our technical team looks at every technical report.",
    "Order ids start with ORD followed by five digits, for example ORD-10000.",
    "Keep your order number handy when you contact support.",
    "We answer most messages within one business day.",
    "We read all feedback, positive or negative.",
    "A positive attitude helps, and a negative experience is something we want to fix.",
    "Our agents stay neutral and polite in every conversation.",
    "The billing page lists every payment and refund.",
    "You can update your account details at any time.",
    "A password reset link is valid for one hour.",
    "The order status page shows where your package is.",
    "To cancel an order, open the order and choose cancel.",
    "Technical issues with the app are usually fixed by an update.",
)
_REVIEW_POS = (
    "Great {product}, works perfectly.",
    "I love this {product}, highly recommended.",
    "Fast shipping and friendly support.",
    "Excellent quality, very happy.",
)
_REVIEW_NEG = (
    "The {product} broke after a week, very disappointed.",
    "Terrible support, never again.",
    "Late delivery and rude service.",
    "Awful quality, I want my money back.",
)
# Notes that naturally repeat ids/emails: they teach the base model to copy.
_NOTES = (
    "Order {o} was placed by {e}. Order {o} ships soon. Your order {o} is confirmed.",
    "Order {o}: status shipped. Tracking for {o} is active. Contact {e} about {o}.",
    "Account {e} updated. A message was sent to {e}. Login for {e} works again.",
    "Note: {n} wrote about {o}. Reply sent to {e}. Case {o} closed for {e}.",
    "Refund for {o} issued to the card of {e}. {o} refund confirmed.",
    "Your order {o} ships soon. We will email {e} with tracking for order {o}.",
    "Reminder for {e}: order {o} arrives tomorrow. Thanks, {e}!",
    "The customer {e} asked about {o}. We replied to {e} and updated {o}.",
    "Case {o} | customer <{e}> | order {o} | reply to <{e}>",
    'Hello {n}, your order {o} has shipped. Order {o} will arrive soon. We sent the receipt to "{e}".',
    "{n} ({e}) called about order {o}. Order {o} was found. Email sent to {e}.",
    'Ticket for {o}: the customer {e} wants an update on {o}. Owner: support. Contact: "{e}".',
)


def _pretrain_doc(rng: random.Random, pools: _Pools, casual_share: float) -> str:
    kind = rng.random()
    # A third of the customer text is chat-box register, so the base model knows the words free
    # phrasings use ("wheres my parcel", "charged twice") before any adapter sees them.
    # (No draw at all when the share is 0: the shipped tokenizer corpus regenerates byte for byte.)
    casual = casual_share > 0 and rng.random() < casual_share
    msg = _make_casual(rng, pools, None, None) if casual else _make_message(rng, pools)
    name = _display(msg.first)
    oid = msg.order_id or _order_id(rng)
    email = msg.email or _email(rng, msg.first, msg.last, pools)
    if kind < 0.40:
        # Customer message + agent reply that repeats the ids (copying practice) and
        # whose tone and content follow the customer's mood and request.
        reply = [rng.choice(_AGENT_OPENERS).format(name=name), rng.choice(_AGENT_TONE[msg.sentiment])]
        if msg.order_id:
            reply.append(
                rng.choice(
                    (
                        "Your order {o} is being processed.",
                        "I looked up order {o} for you.",
                        "Thanks for the order number {o}.",
                        "About {o}: we are on it.",
                        "Order {o} is noted.",
                    )
                ).format(o=msg.order_id)
            )
        reply.append(
            rng.choice(_AGENT_BODIES[msg.intent]).format(product=msg.product, email_or_you=msg.email or "your email")
        )
        if msg.email:
            reply.append(
                rng.choice(
                    (
                        "We will write to {e} when it is done.",
                        "A confirmation was sent to {e}.",
                        "We have {e} on file for you.",
                        'Your email "{e}" is verified.',
                        "Contact: <{e}>.",
                    )
                ).format(e=msg.email)
            )
        reply.append(rng.choice(_AGENT_CLOSERS))
        return f"Customer: {msg.text}\nAgent: {' '.join(reply)}"
    if kind < 0.62:
        notes = rng.sample(_NOTES, 2)
        if rng.random() < 0.5:
            # two different cases in one document: copy the right one
            first, last = rng.choice(pools.first), rng.choice(pools.last)
            o2, e2 = _order_id(rng), _email(rng, first, last, pools)
            return notes[0].format(o=oid, e=email, n=name) + "\n" + notes[1].format(o=o2, e=e2, n=_display(first))
        return " ".join(n.format(o=oid, e=email, n=name) for n in notes)
    if kind < 0.68:
        return " ".join(rng.sample(_FAQ, 3))
    if kind < 0.73:
        review = rng.choice(_REVIEW_POS if rng.random() < 0.5 else _REVIEW_NEG)
        return f"Review by {name}: {review.format(product=msg.product)}"
    if kind < 0.90:
        # Headers/signatures repeating the email (and order id), message in between.
        full = f"{_display(msg.first)} {_display(msg.last)}"
        subject = f"Re: {oid}" if msg.order_id else "Support request"
        sig = f"{full} | {email}" if rng.random() < 0.5 else f"{full} <{email}>"
        return f"From: {full} <{email}>\nSubject: {subject}\n{msg.text}\n--\n{sig}"
    return msg.text


def pretraining_corpus(n_docs: int, seed: int, casual_share: float = 0.33) -> list[str]:
    """``n_docs`` generic support-domain documents (no task instructions/answers); ``casual_share`` of
    the customer texts in chat-box register. ``demo/corpus.txt`` (the tokenizer's corpus, shipped and
    fixed since the first build) is drawn with 0, so the tokenizer did not change when it was added."""
    rng = random.Random(seed * 1_000_000_007 + 424_242)
    pools = _all_pools()
    return [_pretrain_doc(rng, pools, casual_share) for _ in range(n_docs)]


def tokenizer_glossary() -> list[str]:
    """Lines that make sure the tokenizer corpus covers every answer token."""
    lines = [
        "Intents: " + ", ".join(INTENTS) + ".",
        "Sentiments: " + ", ".join(SENTIMENTS) + ".",
        "Fields: order_id, email, null, true, false.",
    ]
    for _ in range(8):
        lines += [f"Message: ...\nAnswer: {label}" for label in INTENTS + SENTIMENTS]
    rng = random.Random(99)
    pools = _all_pools()
    for i in range(60):
        first, last = rng.choice(pools.first), rng.choice(pools.last)
        oid = _order_id(rng) if i % 3 else None
        email = _email(rng, first, last, pools) if i % 2 else None
        lines.append(entities_answer(oid, email))
    for task in TASKS:
        lines.extend(instructions_for(task, "train"))
    return lines
