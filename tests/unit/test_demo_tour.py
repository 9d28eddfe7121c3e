"""The composition tour scripts/demo.py runs: every mode once, prompts in the demo's task contract."""

from __future__ import annotations

from loraplex.demo.tour import DEFAULT_MESSAGE, composition_tour


def test_tour_covers_every_mode_once_on_the_message():
    cases = composition_tour("Where is ORD-12345? jane@example.com")
    names = [name for name, _, _ in cases]
    assert len(set(names)) == len(names)
    modes = {comp["mode"] if comp else "base" for _, _, comp in cases}
    assert modes == {"base", "single", "stack", "blend", "moe", "chain"}
    for _, prompt, comp in cases:
        assert "Where is ORD-12345? jane@example.com" in prompt
        if comp and comp["mode"] == "chain":
            assert all("{input}" in stage["prompt"] for stage in comp["stages"])
        else:
            assert prompt.endswith("Answer:")
    assert composition_tour() == composition_tour(DEFAULT_MESSAGE)
