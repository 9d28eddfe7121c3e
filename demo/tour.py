"""A tour of every composition mode on one customer message: what ``scripts/demo.py`` runs.

Each case pairs a prompt in the demo's task contract (:func:`loraplex.demo.data.format_prompt`) with the
composition a client would send for it, so one engine call shows single adapters, stacking, delta and
logit blends, MoE with given scores and a two-stage chain side by side.
"""

from __future__ import annotations

from loraplex.demo.data import format_prompt

DEFAULT_MESSAGE = "Hi, I was charged twice for order ORD-48213 and I'm really annoyed. Reach me at sam.lee@example.com"

INTENT = "What is the customer's intent?"
SENTIMENT = "How does the customer feel? Answer positive, negative or neutral."
ENTITIES = "Extract the order id and email as JSON."


def composition_tour(message: str = DEFAULT_MESSAGE) -> list[tuple[str, str, dict | None]]:
    """``(case name, prompt, composition)`` per case; composition ``None`` is the bare base model."""
    ask = {
        "intent": format_prompt(INTENT, message),
        "sentiment": format_prompt(SENTIMENT, message),
        "entities": format_prompt(ENTITIES, message),
    }
    chain = {
        "mode": "chain",
        "stages": [
            {"adapter": "entities", "prompt": format_prompt(ENTITIES, "{input}")},
            {
                "adapter": "intent",
                "prompt": format_prompt("Given the extracted fields {previous}, what is the intent?", "{input}"),
            },
        ],
    }
    return [
        ("base model", ask["intent"], None),
        ("single intent", ask["intent"], {"mode": "single", "adapter": "intent"}),
        ("single sentiment", ask["sentiment"], {"mode": "single", "adapter": "sentiment"}),
        ("single entities", ask["entities"], {"mode": "single", "adapter": "entities"}),
        ("stack intent+sentiment", ask["intent"], {"mode": "stack", "adapters": ["intent", "sentiment"]}),
        ("blend delta 0.8/0.2", ask["sentiment"], {"mode": "blend", "weights": {"sentiment": 0.8, "intent": 0.2}}),
        (
            "blend logits 0.8/0.2",
            ask["sentiment"],
            {"mode": "blend", "weights": {"sentiment": 0.8, "intent": 0.2}, "space": "logits"},
        ),
        (
            "moe top-2 (given scores)",
            ask["entities"],
            {"mode": "moe", "top_k": 2, "weights": {"entities": 0.9, "intent": 0.1}},
        ),
        ("chain entities -> intent", message, chain),
    ]
