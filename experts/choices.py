"""What a decoder keeps per sampled choice, and the sampling step over all of them.

Both decoders (`experts.decoder` with our own forward, `experts.hf_decoder` with HF's) share this part:
from the batch's next-token logits to one token per choice, its log probability, its text, and whether
it stops. Text is detokenized incrementally (vLLM's and TGI's offsets: decode a short window of recent
tokens and append the part past the previous window), so a step costs the same at token 1000 as at
token 1; stop strings are searched only where a new one could start.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from loraplex.experts.logits import RowContext, needs_processing, process_logits
from loraplex.experts.logprobs import TokenLogprob, step_logprobs
from loraplex.experts.sampling import SamplingParams, choose_tokens
from loraplex.experts.structured import Grammar, GrammarBook

TokenCallback = Callable[[str], None]


@dataclass
class GenItem:
    """One request step: its prompt tokens and the virtual rows whose logits it mixes."""

    prompt_ids: list[int]
    rows: list[dict[int, float]]  # per virtual row: {slot: weight}
    mix: list[float]  # logits = sum_j mix[j] * logits(rows[j])
    params: SamplingParams
    on_token: TokenCallback | None = None  # choice 0's text deltas
    cancelled: Callable[[], bool] | None = None  # polled every step: a gone client frees its row at once


@dataclass
class GenOutput:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string) | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # per token of `token_ids` (params.logprobs set)
    prompt_logprobs: list[TokenLogprob] | None = None  # per prompt token (params.prompt_logprobs set)
    joined_at: float = 0.0  # perf_counter when its prefill began (admission)
    token_times: list[float] = field(default_factory=list)  # perf_counter of each sampled token


class IncrementalText:
    """Text of a growing token list, decoded a window at a time (equal to decoding the whole list).

    `prefix` and `read` are offsets into the ids: the text of `ids[prefix:read]` is already in `text`, and
    `ids[read:]` are tokens whose text is not yet final (a partial UTF-8 character). Decoding from `prefix`
    rather than `read` keeps the context a tokenizer needs to place spaces (SentencePiece's leading "\u2581").
    """

    def __init__(self, tokenizer, skip_special_tokens: bool):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.text = ""
        self.pending = ""  # text of ids[read:], not final yet
        self.prefix = self.read = 0

    def extend(self, ids: list[int]) -> None:
        """`ids` is the whole list so far (one token longer than at the last call)."""
        decode = self.tokenizer.decode
        before = decode(ids[self.prefix : self.read], skip_special_tokens=self.skip)
        now = decode(ids[self.prefix :], skip_special_tokens=self.skip)
        self.pending = now[len(before) :]  # what a full decode shows for the tokens not yet final (U+FFFD)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.text += self.pending
            self.prefix, self.read, self.pending = self.read, len(ids), ""


@dataclass
class ChoiceState:
    item: GenItem
    generator: torch.Generator | None
    choice: int = 0  # which of the item's sampled copies
    grammar: Grammar | None = None
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    steps: int = 0  # tokens sampled, EOS included (the usage count OpenAI clients expect)
    finish: str | None = None
    logprobs: list[TokenLogprob] | None = None
    joined_at: float = 0.0
    token_times: list[float] = field(default_factory=list)
    detok: IncrementalText | None = None

    def output(self, prompt_lp: list[TokenLogprob] | None) -> GenOutput:
        return GenOutput(
            self.text,
            self.ids,
            self.finish or "length",
            len(self.item.prompt_ids),
            self.steps,
            self.logprobs,
            prompt_lp,
            self.joined_at,
            self.token_times,
        )


def new_choices(item: GenItem, grammars: GrammarBook | None, joined_at: float) -> list[ChoiceState]:
    """One state per sampled copy of `item` (seed + k for copy k, so seeded choices reproduce and differ)."""
    p = item.params
    out = []
    for c in range(p.copies):
        gen = None if p.greedy else torch.Generator().manual_seed(_seed(p, c))
        grammar = grammars.grammar(p.structured) if p.structured is not None and grammars else None
        lp = [] if p.logprobs is not None else None
        out.append(ChoiceState(item, gen, c, grammar, logprobs=lp, joined_at=joined_at))
    return out


def _seed(p: SamplingParams, choice: int) -> int:
    return (p.seed + choice) % 2**63 if p.seed is not None else random.getrandbits(63)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing chars might still become a stop string (or are a half-decoded character)."""
    hold = 1 if text.endswith("\ufffd") else 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


def advance(st: ChoiceState, token: int, logprob: TokenLogprob | None, tokenizer, eos_ids: set[int]) -> None:
    """Append one sampled token: text, stop strings, grammar, length; stream the new visible text."""
    p = st.item.params
    st.steps += 1
    st.token_times.append(time.perf_counter())
    if st.grammar is not None:
        st.grammar.accept(token)
    if logprob is not None:  # the stopping token's too (OpenAI and vLLM list it; harnesses count on it)
        st.logprobs.append(logprob)
    if (token in eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
        st.finish = "stop"
    else:
        if st.detok is None:
            st.detok = IncrementalText(tokenizer, p.skip_special_tokens)
        before = len(st.detok.text)  # final text so far; what follows it may still change
        st.ids.append(token)
        st.detok.extend(st.ids)
        st.text = st.detok.text + st.detok.pending
        cut, hit = -1, ""
        if st.steps >= p.min_tokens:  # stop strings count only from min_tokens on (vLLM's rule)
            # a stop string the previous text did not hold can only end in the new text
            found = [(i, s) for s in p.stop if (i := st.text.find(s, max(0, before - len(s) + 1))) >= 0]
            cut, hit = min(found) if found else (-1, "")
        if cut >= 0:
            st.text, st.finish = st.text[: cut + (len(hit) if p.include_stop_str else 0)], "stop"
        elif st.grammar is not None and st.grammar.terminated:
            st.finish = "stop"
        elif st.steps >= p.max_tokens:
            st.finish = "length"
    if st.item.on_token is not None and st.choice == 0:
        safe = len(st.text) if st.finish else len(st.text) - _held_back(st.text, p.stop)
        if safe > st.emitted:
            st.item.on_token(st.text[st.emitted : safe])
            st.emitted = safe
        elif st.finish is None:  # a token with no new text (special, or a held-back stop prefix): still a chunk,
            st.item.on_token("")  # as vLLM streams it; clients time tokens by chunks (vllm bench serve's TPOT)


def sample_step(
    states: list[ChoiceState],
    logits: torch.Tensor,
    mix: torch.Tensor | None,
    tokenizer,
    eos_ids: set[int],
    stop_ids: list[int],
) -> torch.Tensor:
    """One token for every active choice from the rows' next-token `logits: [vrows, vocab]` (mixed by
    `mix: [choices, vrows]` when a choice blends rows); advances the states and returns the tokens."""
    logits = logits.float()  # [vrows, vocab]
    if mix is not None:
        logits = mix @ logits  # [choices, vocab]
    params = [st.item.params for st in states]
    want = [n for n, p in enumerate(params) if p.logprobs is not None]
    raw = torch.log_softmax(logits[want], dim=-1) if want else None  # [len(want), vocab], before processing
    process = [n for n, p in enumerate(params) if needs_processing(p)]
    if process:
        ctx = [RowContext(params[n], states[n].item.prompt_ids, states[n].ids, states[n].grammar) for n in process]
        logits[process] = process_logits(logits[process], ctx, stop_ids)
    tokens = choose_tokens(logits, params, [st.generator for st in states])
    entries: dict[int, TokenLogprob] = {}
    if want:
        k = max(params[n].logprobs for n in want)
        contexts = [states[n].ids for n in want]
        for n, e in zip(want, step_logprobs(raw, tokens[want], k, tokenizer, contexts)):
            e.top = e.top[: params[n].logprobs]
            entries[n] = e
    for n, (st, t) in enumerate(zip(states, tokens.tolist())):
        advance(st, t, entries.get(n), tokenizer, eos_ids)
        if st.finish is None and st.item.cancelled is not None and st.item.cancelled():
            st.finish = "cancelled"
    return tokens


def row_layout(states: list[ChoiceState], device: torch.device) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
    """How the batch's virtual rows map to its choices: the owner of each row, the same as a tensor (a
    choice's token goes to all its rows), and `mix: [choices, vrows]` for choices that blend several rows
    in logits space (None when every choice is one row of weight 1)."""
    owner = [n for n, st in enumerate(states) for _ in st.item.rows]
    spread = torch.tensor(owner, dtype=torch.long, device=device)
    if all(len(st.item.rows) == 1 and st.item.mix == [1.0] for st in states):
        return owner, spread, None
    mix = torch.zeros(len(states), len(owner), device=device)  # [choices, vrows]
    v = 0
    for n, st in enumerate(states):
        for m in st.item.mix:
            mix[n, v] = m
            v += 1
    return owner, spread, mix


class Finished:
    """Files finished choices under their items; an item is finished when all its choices are."""

    def __init__(self) -> None:
        self._done: dict[int, list[GenOutput | None]] = {}  # id(item) -> its choices' outputs so far
        self.prompt_lp: dict[int, list[TokenLogprob]] = {}  # id(item) -> its scored prompt

    def clear(self) -> None:
        self._done.clear()
        self.prompt_lp.clear()

    def collect(self, done: list[ChoiceState]) -> list[tuple[GenItem, list[GenOutput]]]:
        out = []
        for st in done:
            key = id(st.item)
            slots = self._done.setdefault(key, [None] * st.item.params.copies)
            slots[st.choice] = st.output(self.prompt_lp.get(key))
            if all(o is not None for o in slots):
                del self._done[key]
                self.prompt_lp.pop(key, None)
                n = st.item.params.n
                outs = slots if len(slots) == n else [slots[0]] + [replace(slots[0]) for _ in range(n - 1)]
                out.append((st.item, outs))
        return out
