"""Free phrasings of the demo requests (issue 13): the many ways people actually ask.

:mod:`loraplex.demo.data` renders one contract (``{instruction}\\n\\nMessage: ...\\n\\nAnswer:``);
adapters trained only on it learn the template, not the task. This module renders the same
messages the way a newcomer types them: the instruction built from parts (hundreds of phrasings
per task, or a one-word keyword, or absent), before, after or around the message, the message
bare, quoted or labelled (``Ticket:``, ``Email:``, ``Note``...), arrows, bullets, JSON-ish and
pipe layouts, casing, typos, chit-chat, with or without an answer cue, and through the chat
template (:func:`chat_prompt`), so ``/v1/chat/completions`` is trained as well as completions.

Two splits with disjoint parts: ``"train"`` and ``"dev"``. Every list below keeps every fifth
entry for ``dev`` only, and ``dev`` messages use the held-out name/product pools. ``dev`` is the
free-like set that calibration and hyper-parameters are chosen on; the hand-written
``free_phrasing.jsonl`` is never used for either. ``"all"`` (train names and products, every part)
is what the shipped demo trains on once its settings were chosen on a ``"train"`` build's ``dev``
score: the usual retrain on train + dev, because every extra phrasing is one a newcomer may type.
"""

from __future__ import annotations

import functools
import random

from loraplex.demo.data import (
    INTENTS,
    SENTIMENTS,
    TASKS,
    CustomerMessage,
    Example,
    entities_answer,
    make_casual_message,
    make_message,
)

FREE_SPLITS = ("train", "dev", "all")
CHAT_CUE = "\n\nAnswer:"  # what the demo's chat template appends after the last user turn
_SPLIT_SALT = {"train": 3_000_017, "dev": 9_000_011, "all": 3_000_017}
_TASK_SALT = {"intent": 5, "sentiment": 7, "entities": 13}

# --------------------------------------------------------------------------- #
# Instruction parts
# --------------------------------------------------------------------------- #

_QUESTIONS: dict[str, tuple[str, ...]] = {
    "intent": (
        "What does the customer want?",
        "What is this customer asking for?",
        "What's the intent?",
        "Which intent does this have?",
        "What kind of request is this?",
        "What do they need?",
        "Which category does this ticket belong to?",
        "What is this message about?",
        "Why is the customer contacting us?",
        "What is the purpose of this message?",
        "Which team should handle this?",
        "What's the request type?",
        "What is the customer trying to do?",
        "Which bucket does this go in?",
        "What do they want from us?",
        "Can you tell what this person needs?",
        "What's the reason for this ticket?",
        "What is the user asking?",
        "Which support category fits?",
        "What's going on here, which intent?",
    ),
    "sentiment": (
        "How does the customer feel?",
        "Is this customer happy or upset?",
        "What's the sentiment?",
        "Is the tone positive, negative or neutral?",
        "How is the customer feeling?",
        "Happy, angry or neutral?",
        "What mood is the writer in?",
        "Does this sound positive or negative?",
        "Is the customer satisfied?",
        "What's the tone of this message?",
        "Is this person pleased or annoyed?",
        "How upset is this customer, if at all?",
        "Emotional tone of this one?",
        "Positive or negative?",
        "Are they angry?",
        "What vibe does this message give?",
        "Is this a happy customer?",
        "How would you rate the mood?",
        "Is the writer calm, happy or mad?",
        "What's their attitude?",
    ),
    "entities": (
        "What is the order id and email?",
        "Which order and which email are mentioned?",
        "What order number and email address are in here?",
        "Can you pull the order id and email out of this?",
        "Any order id or email in this?",
        "What's the order number and the contact email?",
        "Which order id and email does this mention?",
        "What are the order_id and email fields?",
        "Is there an order number or an email address here?",
        "What ids are in this message?",
        "Which order is this about, and what's their email?",
        "What is the order reference and the email?",
        "Got an order id and email in there?",
        "What order and email should I log for this?",
        "Where's the order number and email in this?",
        "Find me the order id and email?",
        "What contact details and order number does this have?",
        "Which order_id and email appear?",
        "Can you get me the order and the email?",
        "What are the entities?",
    ),
}
_LABEL_VERBS = ("classify", "identify", "label", "tag", "determine", "give me", "tell me")  # the labelling tasks'
_VERBS: dict[str, tuple[str, ...]] = {
    "intent": _LABEL_VERBS
    + (
        "find",
        "name",
        "categorize",
        "detect",
        "pick",
        "work out",
        "figure out",
        "what is",
    ),
    "sentiment": _LABEL_VERBS
    + (
        "rate",
        "judge",
        "assess",
        "detect",
        "guess",
        "score",
        "read",
        "what is",
    ),
    "entities": (
        "extract",
        "pull out",
        "get",
        "find",
        "grab",
        "parse",
        "give me",
        "return",
        "list",
        "fetch",
        "pick out",
        "capture",
        "read out",
        "copy out",
        "what is",
    ),
}
_OBJECTS: dict[str, tuple[str, ...]] = {
    "intent": (
        "the intent",
        "the customer's intent",
        "the request type",
        "the intent category",
        "what they want",
        "the purpose",
        "the topic",
        "the reason for contacting us",
        "the intent label",
        "the category",
        "what the customer is asking for",
        "the support intent",
        "the kind of request",
        "the ticket type",
        "the customer's goal",
    ),
    "sentiment": (
        "the sentiment",
        "the tone",
        "the mood",
        "how the customer feels",
        "the customer's attitude",
        "the emotion",
        "the sentiment label",
        "the feeling",
        "whether they are happy or upset",
        "the customer's mood",
        "the overall tone",
        "positive, negative or neutral",
        "the emotional tone",
        "how happy the customer is",
        "the writer's sentiment",
    ),
    "entities": (
        "the order id and email",
        "the order number and email address",
        "order_id and email",
        "the entities",
        "the order reference and contact email",
        "any order id and email",
        "the ids and the email",
        "the structured fields",
        "the order id plus the email",
        "order number + email",
        "the customer's order id and email",
        "the order_id / email fields",
        "the email and the order number",
        "the order and email details",
        "order id, email",
    ),
}
_TARGETS = (
    "",
    " of this message",
    " of this ticket",
    " here",
    " for this email",
    " of the note below",
    " in this chat",
    " from this",
    " of the following",
    " for me",
    " of this text",
    " in the message",
    " for this one",
    " of this request",
    " below",
)
_ENTITY_FORMATS = (
    "",
    " as JSON",
    " in JSON",
    ", JSON please",
    " (json)",
    ", null if missing",
    " as json, null when absent",
    "",
    " into JSON",
    " - json",
)
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "intent": (
        "intent",
        "Intent?",
        "INTENT",
        "intent label",
        "category?",
        "intent pls",
        "Intent:",
        "type?",
        "topic?",
        "intent??",
    ),
    "sentiment": (
        "sentiment",
        "Sentiment?",
        "SENTIMENT",
        "mood?",
        "tone?",
        "sentiment pls",
        "Sentiment:",
        "feeling?",
        "vibe?",
        "sentiment??",
    ),
    "entities": (
        "entities",
        "Entities?",
        "ENTITIES",
        "ids?",
        "order id + email",
        "json",
        "Entities:",
        "extract",
        "fields?",
        "NER",
    ),
}
_ENDINGS = ("", "", ".", "?", ":", " please", " pls", " - one label", ", just the answer", "!")

# --------------------------------------------------------------------------- #
# Message wrappers, layouts, cues, chit-chat
# --------------------------------------------------------------------------- #

_LABELS = (
    "",
    "",
    "Message: ",
    "Ticket: ",
    "Email: ",
    "Note: ",
    "Customer: ",
    "Text: ",
    "Msg: ",
    "Input: ",
    "Customer says: ",
    "From customer: ",
    "Chat: ",
    "Ticket #42: ",
    "Support email: ",
    "",
    "User: ",
    "Inbox: ",
    "Forwarded from the help desk: ",
    "Complaint: ",
)
_QUOTES = (
    ("", ""),
    ("", ""),
    ('"', '"'),
    ("'", "'"),
    ("<<", ">>"),  # dev only
    ("\u201c", "\u201d"),
    ("\u00ab", "\u00bb"),
    ("[", "]"),
    ('"""\n', '\n"""'),
    ("(", ")"),  # dev only
)
# {i} instruction, {m} decorated message.
_LAYOUTS = (
    "{i}\n\n{m}",
    "{i}\n{m}",
    "{i} {m}",
    "{i}: {m}",
    "{m}\n\n{i}",
    "{m}\n{i}",
    "{m} {i}",
    "{i} -> {m}",
    "{m} -> {i}",
    "{i} | {m}",
    "- text: {m}\n- task: {i}",
    "{i}\n---\n{m}",
    "{m}\n---\n{i}",
    "The customer wrote: {m}. {i}",
    "{i} The customer said: {m}",
    "Q: {i}\nText: {m}",
    "{m}\n\nQ: {i}",
    "task: {i}\ninput: {m}",
    '{{"task": "{i}", "text": "{m}"}}',
    "{i} (text: {m})",
    "Here's a ticket: {m} -- {i}",
    "{i} => {m}",
    "{m} => {i}",
    "Someone wrote in: {m}\n{i}",
    "{i}\n\n{m}\n\nThanks!",
    "{i}\n* {m}",
    "Can you help? {m} {i}",
    "{m}\n\n({i})",
    "{i} Here it is: {m}",
    "Got this one: {m}. {i}",
)
_CUES = (
    "",
    "",
    "",
    "",
    "\n\nAnswer:",
    "\nAnswer:",
    " Answer:",
    "\nOutput:",
    "\nA:",
    "\nLabel:",
    " ->",
    "\nResult:",
    "\n\nReply:",
    " =>",
    "\nYour answer:",
)
_TASK_CUES = {"intent": "\nIntent:", "sentiment": "\nSentiment:", "entities": "\nJSON:"}
_PREFIXES = (
    "Hi! ",
    "Hey, ",
    "Hello there. ",
    "Morning! ",
    "Quick one: ",
    "Another one for you. ",
    "Hope you're well! ",
    "Happy Monday! ",
    "ok next ticket. ",
    "Need your help. ",
    "Thanks in advance! ",
    "Good evening! ",
    "Yo, ",
    "Hey team, ",
    "Hi, a quick favour? ",
)
_SUFFIXES = (" Thanks!", " thx", " Cheers.", " ty", " Appreciate it.", " Many thanks!", " cheers mate", " Thank you.")
_SYSTEM = (
    "You are a helpful support assistant.",
    "You help our customer support team.",
    "Answer briefly.",
    "You are an assistant for a shop's help desk.",
    "Reply with the answer only.",
)


@functools.cache  # called ~10 times per rendered request on the same few tuples
def _split_part(items: tuple, split: str) -> tuple:
    """Every fifth item is dev-only; the rest are train-only (disjoint by construction); "all" is both."""
    if split == "all":
        return tuple(items)
    keep = (lambda i: i % 5 == 4) if split == "dev" else (lambda i: i % 5 != 4)
    return tuple(x for i, x in enumerate(items) if keep(i))


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def add_typos(text: str, rng: random.Random, rate: float) -> str:
    """Swap, drop or double one letter in about ``rate`` of the alphabetic words (never in ids or emails)."""
    return " ".join(_typo(w, rng) if rng.random() < rate else w for w in text.split(" "))


def instruction(task: str, rng: random.Random, split: str = "train") -> str:
    """One free instruction for ``task``: a question, verb + object (+ target, + format), or a keyword."""
    r = rng.random()
    if r < 0.35:
        text = rng.choice(_split_part(_QUESTIONS[task], split))
    elif r < 0.85:
        verb = rng.choice(_split_part(_VERBS[task], split))
        obj = rng.choice(_split_part(_OBJECTS[task], split))
        text = f"{verb} {obj}{rng.choice(_split_part(_TARGETS, split))}"
        if task == "entities":
            text += rng.choice(_split_part(_ENTITY_FORMATS, split))
        text += rng.choice(_split_part(_ENDINGS, split))
        if verb == "what is" and not text.endswith("?"):
            text = text.rstrip(".:!") + "?"
        text = text[:1].upper() + text[1:] if rng.random() < 0.6 else text
    else:
        text = rng.choice(_split_part(_KEYWORDS[task], split))
    c = rng.random()
    if c < 0.2:
        text = text.lower()
    elif c < 0.26:
        text = text.upper()
    if rng.random() < 0.15:
        text = add_typos(text, rng, 0.25)
    return text


def render(
    task: str, msg: CustomerMessage, rng: random.Random, split: str = "train", bare: bool = False, cue: float = 1.0
) -> str:
    """One free-phrased request (completions text) asking ``task`` about ``msg``; ``bare`` leaves the
    instruction out (the message alone: an adapter answers its own task, a router cannot tell); ``cue``
    is the chance of drawing an ending cue (most are the empty one)."""
    text = msg.text
    if task != "entities" and rng.random() < 0.15:
        text = add_typos(text, rng, 0.08)
    label = rng.choice(_split_part(_LABELS, split))
    left, right = rng.choice(_split_part(_QUOTES, split))
    m = f"{label}{left}{text}{right}"
    if bare:
        prompt = m
    else:
        layout = rng.choice(_split_part(_LAYOUTS, split))
        prompt = layout.format(i=instruction(task, rng, split), m=m)
    if task != "entities":
        c = rng.random()
        if c < 0.06:
            prompt = prompt.lower()
        elif c < 0.09:
            prompt = prompt.upper()
    if rng.random() < 0.2:
        prompt = rng.choice(_split_part(_PREFIXES, split)) + prompt
    if rng.random() < 0.08:
        prompt += rng.choice(_split_part(_SUFFIXES, split))
    if rng.random() < cue:
        task_cue = not bare and rng.random() < 0.1  # "Intent:" names the task: a bare row must not
        prompt += _TASK_CUES[task] if task_cue else rng.choice(_split_part(_CUES, split))
    return prompt.strip()


def chat_prompt(content: str, system: str | None = None) -> str:
    """The text the demo's chat template renders (after ``<s>``) for an optional system turn and one
    user turn: contents trimmed, joined by a blank line, then the ``Answer:`` cue unless present."""
    parts = [p.strip() for p in (system, content) if p]
    text = "\n\n".join(parts)
    return text if text.endswith("Answer:") else text + CHAT_CUE


def _answer(task: str, msg: CustomerMessage) -> str:
    if task == "intent":
        return msg.intent
    if task == "sentiment":
        return msg.sentiment
    return entities_answer(msg.order_id, msg.email)


def make_free_examples(
    task: str, n: int, seed: int, split: str = "train", chat_share: float = 0.35, bare_share: float = 0.06
) -> list[Example]:
    """``n`` free-phrased examples of ``task``: casual or templated messages (half each), rendered by
    :func:`render`; ``chat_share`` of them as the chat template renders the same request (``prompt`` is
    then the chat text); ``bare_share`` with no instruction at all. ``instruction`` holds the text the
    gateway routes on (the request, or a chat's system + user turns), empty for bare rows.
    Labels are balanced like :func:`loraplex.demo.data.make_examples`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if split not in FREE_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {FREE_SPLITS}")
    rng = random.Random(seed * 1_000_000_007 + _SPLIT_SALT[split] + _TASK_SALT[task])
    pools = "heldout" if split == "dev" else "train"
    out: list[Example] = []
    for i in range(n):
        intent = INTENTS[i % len(INTENTS)] if task == "intent" else None
        sentiment = SENTIMENTS[i % len(SENTIMENTS)] if task == "sentiment" else None
        if rng.random() < 0.5:
            msg = make_casual_message(rng, pools, intent, sentiment, every_part=split == "all")
        else:
            msg = make_message(rng, pools, intent, sentiment)
        bare = rng.random() < bare_share
        chat = rng.random() < chat_share
        user = render(task, msg, rng, split, bare=bare, cue=0.15 if chat else 1.0)  # chat users rarely type a cue
        prompt = routed = user
        if chat:
            system = rng.choice(_split_part(_SYSTEM, split)) if rng.random() < 0.3 else None
            prompt = chat_prompt(user, system)
            routed = "\n\n".join(p for p in (system, user) if p)  # what the gateway routes a chat request on
        out.append(
            Example(
                task=task,
                instruction="" if bare else routed,
                message=msg.text,
                prompt=prompt,
                answer=_answer(task, msg),
                intent=msg.intent,
                sentiment=msg.sentiment,
                order_id=msg.order_id,
                email=msg.email,
                instruction_first=True,
            )
        )
    return out
