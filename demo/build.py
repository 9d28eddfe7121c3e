"""Build the embedded loraplex demo fully offline and deterministically.

Produces, under ``out_dir`` (default ``models/demo``)::

    base/                         tiny Llama base model + its BPE tokenizer
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  (chat template included)
    adapters/intent/              PEFT LoRA adapter (adapter_config.json +
    adapters/sentiment/             adapter_model.safetensors)
    adapters/entities/
    manifest.json                 versions, seeds, sizes, timings, data counts

Steps: (1) train a byte-level BPE tokenizer (digits split individually) on the
shipped ``demo/corpus.txt``; (2) initialise a small ``LlamaForCausalLM`` and
pretrain it briefly (causal LM) on :func:`loraplex.demo.data.pretraining_corpus`
(support-domain text in formal and chat-box register, no task answers); (3) train one
LoRA adapter per task on :func:`training_examples` (the prompt contract's templates plus
free phrasings from :mod:`loraplex.demo.phrasing`, a third of them through the chat
template) with the loss on the answer tokens + EOS only, templates alone for the first
steps (a curriculum, see :func:`train_lora_on_examples`). Everything is seeded; same
seed -> same weights. About 7.5 minutes on two CPU cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplex.demo import data as demo_data
from loraplex.demo import phrasing
from loraplex.demo.training_loop import progress_bar, warmup_cosine

if TYPE_CHECKING:  # torch loads lazily: `demo_is_built` and the constants stay cheap to import
    import torch

ADAPTER_TASKS = demo_data.TASKS  # adapter name == task name
BASE_DIRNAME = "base"
ADAPTERS_DIRNAME = "adapters"
MANIFEST_NAME = "manifest.json"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

CORPUS_PATH = Path(__file__).resolve().parent / "corpus.txt"  # shipped as package data
CORPUS_SEED = 20240601
CORPUS_DOCS = 1100

# GPT-2's pre-tokenizer regex, except that a letter run directly followed by "@", "_",
# a digit or ".<letter>" (i.e. the start of an email / identifier) does not take the
# leading space (possessive ++ so the lookahead cannot backtrack into the word).
PRETOKENIZE_PATTERN = (
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++(?!\.\p{L}|[@_\p{N}])|\p{L}+| ?\p{N}+"
    r"| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
)

# Renders user/system contents (joined by blank lines); if the conversation ends on a
# user turn and add_generation_prompt is set, appends the "\n\nAnswer:" cue unless the
# content already ends with it. Assistant turns render as " {content}</s>".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] | trim }}{{ eos_token }}"
    "{% else %}"
    "{% if not loop.first %}{{ '\n\n' }}{% endif %}"
    "{{ message['content'] | trim }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{% if not (messages[-1]['content'] | trim).endswith('Answer:') %}"
    "{{ '\n\nAnswer:' }}"
    "{% endif %}"
    "{% endif %}"
)


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of the build (recorded in the manifest)."""

    # tokenizer
    vocab_size: int = 1536
    # model
    hidden_size: int = 192
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    rope_theta: float = 1e6
    init_std: float = 0.01
    copy_circuit: bool = True
    # pretraining
    pretrain_docs: int = 24000
    pretrain_seq_len: int = 128
    pretrain_batch: int = 32
    pretrain_steps: int = 250
    pretrain_lr: float = 3e-3
    pretrain_warmup: int = 30
    # adapters
    lora_r: int = 16
    lora_alpha: int = 32
    lora_lr: dict[str, float] = field(default_factory=lambda: {"intent": 2.5e-3, "sentiment": 2e-3, "entities": 2e-3})
    lora_batch: int = 32
    lora_warmup: int = 10
    lora_steps: dict[str, int] = field(default_factory=lambda: {"intent": 300, "sentiment": 300, "entities": 360})
    train_examples: dict[str, int] = field(
        default_factory=lambda: {"intent": 8000, "sentiment": 8000, "entities": 10000}
    )
    free_share: float = 0.65  # of each adapter's examples: free phrasings (issue 13), the rest templates
    chat_share: float = 0.35  # of the free phrasings: rendered through the chat template
    free_parts: str = "train"  # "train" (shipped): dev parts held out, free_dev stays honest; "all": every part
    curriculum_steps: int = 80  # each adapter's first steps see template rows only (train_lora_on_examples)
    heldout_examples: int = 200
    weight_decay: float = 0.0
    threads: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- #
# Paths / status
# --------------------------------------------------------------------------- #


def base_dir(out_dir: Path) -> Path:
    return Path(out_dir) / BASE_DIRNAME


def adapter_dir(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / ADAPTERS_DIRNAME / name


def demo_is_built(out_dir: Path) -> bool:
    """True when the base model, its tokenizer, every adapter and the manifest exist."""
    out_dir = Path(out_dir)
    base = base_dir(out_dir)
    needed = [
        out_dir / MANIFEST_NAME,
        base / "config.json",
        base / "model.safetensors",
        base / "tokenizer.json",
        base / "tokenizer_config.json",
    ]
    for name in ADAPTER_TASKS:
        needed += [
            adapter_dir(out_dir, name) / "adapter_config.json",
            adapter_dir(out_dir, name) / "adapter_model.safetensors",
        ]
    return all(p.is_file() for p in needed)


# --------------------------------------------------------------------------- #
# Corpus + tokenizer
# --------------------------------------------------------------------------- #


def generate_corpus_text(seed: int = CORPUS_SEED, n_docs: int = CORPUS_DOCS) -> str:
    """The text of ``demo/corpus.txt`` (deterministic; the shipped file is this text)."""
    docs = demo_data.pretraining_corpus(n_docs, seed, casual_share=0.0)
    parts = docs + ["\n".join(demo_data.tokenizer_glossary())]
    return "\n\n".join(parts) + "\n"


def load_corpus_text(path: Path = CORPUS_PATH) -> str:
    """The shipped corpus, or (if the checkout lacks it) the identical regenerated text."""
    path = Path(path)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return generate_corpus_text()


def train_tokenizer(corpus_text: str, vocab_size: int = 1536):
    """Byte-level BPE wrapped as a ``PreTrainedTokenizerFast``.

    Pre-tokenisation is GPT-2's regex with one change (:data:`PRETOKENIZE_PATTERN`):
    a letter run that continues an email/identifier (followed by ``@``, ``_``, a digit
    or ``.letter``) does not absorb the preceding space. So ``" jane.doe@x.com"`` and
    ``'"jane.doe@x.com'`` yield the same ``jane . doe @ x . com`` tokens, and the
    digits of ``ORD-48213`` form the same tokens everywhere: copying an entity into
    the JSON answer is copying tokens. Encoding adds ``<s>`` in front (no ``</s>``);
    padding is on the left; decoding round-trips exactly (byte level).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([d for d in corpus_text.split("\n\n") if d.strip()], trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=DemoConfig.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #


def make_base_model(tokenizer, cfg: DemoConfig, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rms_norm_eps=1e-5,
        initializer_range=cfg.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if cfg.copy_circuit:
        install_copy_circuit(model, seed)
    gc = model.generation_config
    gc.pad_token_id = tokenizer.pad_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    gc.do_sample = False
    gc.max_new_tokens = 48
    return model


@dataclass(frozen=True)
class CircuitScales:
    """Magnitudes of the hand-initialised copy circuit (see :func:`install_copy_circuit`)."""

    embed_std: float = 0.05  # std of the token-identity part of the embeddings
    const: float = 0.2  # value of the constant embedding coordinate
    prev_qk: float = 2.5  # layer-0 previous-token head: q/k weight on the constant
    prev_pairs: int = 4  # number of highest-frequency RoPE pairs it uses
    prev_out: float = 0.045  # layer-0 o_proj gain into the "previous token" subspace
    ind_q: float = 2.2  # layer-1 induction head: query gain
    ind_k: float = 2.2  # layer-1 induction head: key gain
    ind_out: float = 0.25  # layer-1 o_proj gain back into the token subspace
    max_angle: float = 0.5  # RoPE pairs usable for matching: theta_m * max_pos <= this


def _orthonormal_rows(rows: int, cols: int, gen) -> torch.Tensor:
    import torch

    q, _ = torch.linalg.qr(torch.randn(cols, rows, generator=gen))
    return q.T.contiguous()  # rows x cols, orthonormal rows


def install_copy_circuit(model, seed: int, scales: CircuitScales = CircuitScales()) -> dict:
    """Hand-initialise an induction (copy) circuit in a fresh ``LlamaForCausalLM``.

    Why: copying arbitrary ids/emails needs an *induction head* (layer 0 head moves
    "previous token" into each position, a layer 1 head attends to the position
    whose previous token equals the current token and copies it). Gradient descent
    finds that circuit only after far more tokens than a CPU build can afford, so we
    start from it and let pretraining adapt everything around (and in) it.

    Residual layout (hidden size H, head dim d): ``[0, H-d-1)`` token identity,
    ``H-d-1`` a constant coordinate (lets a head attend by position only),
    ``[H-d, H)`` the "previous token" subspace. Layer 0 / q-head 0 + kv-head 0 attend
    one position back using the highest-frequency RoPE pairs and write a projection
    of that token into the previous-token subspace; layer 1 / q-head 0 + kv-head 0
    match the current token against it using only the low-frequency RoPE pairs (so
    the match barely depends on distance) and write the attended token back into the
    token subspace, i.e. raise its logit through the tied LM head.
    """
    import torch

    cfg = model.config
    H, d = (
        cfg.hidden_size,
        cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads,
    )
    half = d // 2
    if cfg.num_hidden_layers < 2 or H - d - 1 < d:
        raise ValueError("copy circuit needs >= 2 layers and hidden_size >= 2*head_dim + 1")
    gen = torch.Generator().manual_seed(seed + 4242)
    tok_dims = torch.arange(0, H - d - 1)
    const_dim = H - d - 1
    prev_dims = torch.arange(H - d, H)
    n_tok = tok_dims.numel()
    rope = cfg.rope_parameters or {}
    theta = float(rope.get("rope_theta", 10000.0))
    freqs = theta ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / d)
    match_pairs = [m for m in range(half) if freqs[m] * cfg.max_position_embeddings <= scales.max_angle]
    if len(match_pairs) < 4:
        raise ValueError("rope_theta too small for a distance-independent match; raise it")
    match_dims = torch.tensor(match_pairs + [m + half for m in match_pairs])

    V = _orthonormal_rows(d, n_tok, gen)  # token -> previous-token payload
    U = _orthonormal_rows(d, n_tok, gen)  # token -> induction value
    G = _orthonormal_rows(match_dims.numel(), d, gen)  # payload -> match space

    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, tok_dims] = torch.randn(emb.shape[0], n_tok, generator=gen) * scales.embed_std
        emb[:, const_dim] = scales.const

        a0 = model.model.layers[0].self_attn
        a0.q_proj.weight[:d].zero_()
        a0.k_proj.weight[:d].zero_()
        a0.v_proj.weight[:d].zero_()
        a0.o_proj.weight[:, :d].zero_()
        for m in range(scales.prev_pairs):
            ang = float(freqs[m])
            a0.q_proj.weight[m, const_dim] = scales.prev_qk
            a0.k_proj.weight[m, const_dim] = scales.prev_qk * math.cos(ang)
            a0.k_proj.weight[m + half, const_dim] = scales.prev_qk * math.sin(ang)
        a0.v_proj.weight[:d, tok_dims] = V
        a0.o_proj.weight[prev_dims, :d] = scales.prev_out * torch.eye(d)

        a1 = model.model.layers[1].self_attn
        a1.q_proj.weight[:d].zero_()
        a1.k_proj.weight[:d].zero_()
        a1.v_proj.weight[:d].zero_()
        a1.o_proj.weight[:, :d].zero_()
        a1.q_proj.weight[match_dims[:, None], tok_dims[None, :]] = scales.ind_q * (G @ V)
        a1.k_proj.weight[match_dims[:, None], prev_dims[None, :]] = scales.ind_k * G
        a1.v_proj.weight[:d, tok_dims] = U
        a1.o_proj.weight[tok_dims[:, None], torch.arange(d)[None, :]] = scales.ind_out * U.T
    return {"match_pairs": len(match_pairs), "scales": asdict(scales)}


def pack_documents(tokenizer, docs: Sequence[str], seq_len: int) -> torch.Tensor:
    """``<s> doc </s>`` streams packed into rows of ``seq_len`` tokens."""
    import torch

    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(docs), add_special_tokens=True)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n_rows = len(stream) // seq_len
    return torch.tensor(stream[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)


def pretrain(model, tokenizer, cfg: DemoConfig, seed: int, progress: bool = True, on_step=None) -> dict:
    """Causal-LM pretraining on the support-domain corpus; returns stats.

    ``on_step(step, model)`` (optional) is called after every optimiser step.
    """
    import torch

    docs = demo_data.pretraining_corpus(cfg.pretrain_docs, seed)
    rows = pack_documents(tokenizer, docs, cfg.pretrain_seq_len)
    gen = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(rows.shape[0], generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.pretrain_warmup, cfg.pretrain_steps))
    model.train()
    losses: list[float] = []
    bar = progress_bar(range(cfg.pretrain_steps), cfg.pretrain_steps, "pretrain base", progress)
    pos = 0
    for step in bar:
        if pos + cfg.pretrain_batch > order.numel():
            order = torch.randperm(rows.shape[0], generator=gen)
            pos = 0
        batch = rows[order[pos : pos + cfg.pretrain_batch]]
        pos += cfg.pretrain_batch
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if on_step is not None:
            on_step(step, model)
        if step % 10 == 0 or step == cfg.pretrain_steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    tokens = cfg.pretrain_steps * cfg.pretrain_batch * cfg.pretrain_seq_len
    return {
        "docs": len(docs),
        "rows": int(rows.shape[0]),
        "tokens_seen": tokens,
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
    }


# --------------------------------------------------------------------------- #
# Supervised (answer-only) data + LoRA training
# --------------------------------------------------------------------------- #


def encode_supervised(tokenizer, examples: Sequence[demo_data.Example]) -> list[tuple[list[int], int]]:
    """``(ids, n_prompt)`` per example: ``<s> prompt`` + `` answer`` + ``</s>``."""
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    answers = tokenizer([" " + e.answer for e in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p + a + [eos], len(p)) for p, a in zip(prompts, answers)]


def collate_supervised(items: Sequence[tuple[list[int], int]], pad_id: int):
    """Right-padded batch; labels are -100 except on answer tokens + EOS."""
    import torch

    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(items):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return input_ids, attention, labels


def shuffled_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of uniformly shuffled full batches (deterministic given ``rng``).

    No length bucketing on purpose: length correlates with the label (e.g. neutral
    messages are shorter, entity answers with an email are longer), and label-sorted
    batches make the short LoRA runs unstable.
    """
    order = list(range(n))
    rng.shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return batches[::-1]


def lora_config(cfg: DemoConfig, base_path: str | None = None):
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGET_MODULES),
        base_model_name_or_path=base_path,
    )


def training_examples(task: str, cfg: DemoConfig, seed: int) -> list[demo_data.Example]:
    """The adapter's training mix: ``free_share`` free phrasings (:mod:`loraplex.demo.phrasing`, a
    ``chat_share`` of them through the chat template), the rest the prompt contract's templates,
    shuffled together so every batch mixes both registers."""
    n = cfg.train_examples[task]
    n_free = round(n * cfg.free_share)
    examples = demo_data.make_examples(task, n - n_free, seed, "train")
    examples += phrasing.make_free_examples(task, n_free, seed, cfg.free_parts, chat_share=cfg.chat_share)
    random.Random(seed * 7 + ADAPTER_TASKS.index(task)).shuffle(examples)
    return examples


def train_adapter(
    base_model, tokenizer, task: str, cfg: DemoConfig, seed: int, base_path: str | None = None, progress: bool = True
):
    """Wrap ``base_model`` with a fresh LoRA, train it on ``task``; returns ``(peft_model, stats)``.

    The caller must ``unload()`` the returned model to get the untouched base back.
    """
    task_seed = seed * 1000 + 101 + ADAPTER_TASKS.index(task)
    examples = training_examples(task, cfg, seed)
    return train_lora_on_examples(
        base_model,
        tokenizer,
        examples,
        cfg,
        first=[e for e in examples if e.prompt.endswith(demo_data.ANSWER_CUE) and demo_data.MESSAGE_LABEL in e.prompt],
        first_steps=cfg.curriculum_steps,
        lr=cfg.lora_lr[task],
        steps=cfg.lora_steps[task],
        seed=task_seed,
        base_path=base_path,
        progress=progress,
        desc=f"adapter {task}",
    )


def train_lora_on_examples(
    base_model,
    tokenizer,
    examples: Sequence[demo_data.Example],
    cfg: DemoConfig,
    lr: float,
    steps: int,
    seed: int,
    base_path: str | None = None,
    progress: bool = True,
    desc: str = "adapter",
    first: Sequence[demo_data.Example] = (),
    first_steps: int = 0,
):
    """Wrap ``base_model`` with a fresh LoRA (:func:`lora_config`) and train it on ``examples``.

    The task-agnostic half of :func:`train_adapter`, public so that adapters for tasks outside the
    demo's three (:mod:`loraplex.demo.byo_build`) train with exactly the same loop, loss (answer
    tokens + EOS only), batching and schedule. ``seed`` seeds both the LoRA init and the batch order.
    Returns ``(peft_model, stats)``; the caller must ``unload()`` the model to get the base back.

    ``first``/``first_steps``: a curriculum. The first ``first_steps`` batches come from ``first`` only (the
    demo passes the rows in the contract's shape, ``Message:`` ... ``\n\nAnswer:``: its templates plus the
    few free rows that happen to share that shape). On the free-phrasing mix alone the sentiment LoRA sat on a loss
    plateau (~0.55) for a variable 150-300 steps before it found the mood cue; on templates it finds it
    in ~60, and the mixed steps after that then only have to generalise the readout.
    """
    import torch
    from peft import get_peft_model

    data = encode_supervised(tokenizer, examples)
    warm = encode_supervised(tokenizer, first) if first and first_steps else []
    torch.manual_seed(seed)
    model = get_peft_model(base_model, lora_config(cfg, base_path))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.lora_warmup, steps))
    rng = random.Random(seed)
    batches: list[list[int]] = []
    losses: list[float] = []
    model.train()
    bar = progress_bar(range(steps), steps, desc, progress)
    warm_batches: list[list[int]] = []
    for step in bar:
        if step < first_steps and warm:
            if not warm_batches:
                warm_batches = shuffled_batches(len(warm), cfg.lora_batch, rng)
            rows = [warm[i] for i in warm_batches.pop()]
        else:
            if not batches:
                batches = shuffled_batches(len(data), cfg.lora_batch, rng)
            rows = [data[i] for i in batches.pop()]
        # input_ids, attention, labels: [lora_batch, longest sequence in the batch]
        input_ids, attention, labels = collate_supervised(rows, tokenizer.pad_token_id)
        out = model(input_ids=input_ids, attention_mask=attention, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if step % 5 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-5:]) / len(losses[-5:]):.4f}")
    model.eval()
    stats = {
        "train_examples": len(examples),
        "steps": steps,
        "examples_seen": steps * cfg.lora_batch,
        "trainable_params": sum(p.numel() for p in params),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 5),
    }
    return model, stats


# --------------------------------------------------------------------------- #
# Orchestration
# --------------------------------------------------------------------------- #


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dir_files(path: Path, root: Path) -> dict[str, dict[str, Any]]:
    return {
        str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def atomic_build(out_dir: Path, threads: int, seed: int) -> Iterator[Path]:
    """The set-up every demo build shares: ``threads`` torch threads, seeded RNGs, no HF progress bars,
    and a sibling temp folder (yielded) that replaces ``out_dir`` only when the block finishes: a crash
    never leaves half a build. Threads are restored and the temp folder removed either way."""
    import torch
    from transformers.utils import logging as hf_logging

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    random.seed(seed)
    torch.manual_seed(seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.building"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    try:
        yield tmp_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        torch.set_num_threads(prev_threads)


def build_demo(
    out_dir: Path, seed: int = 0, force: bool = False, progress: bool = True, config: DemoConfig | None = None
) -> dict:
    """Build tokenizer + base model + the three adapters into ``out_dir``.

    Returns the manifest. If the demo is already built and ``force`` is false, the
    existing manifest is returned without doing any work.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    if not force and demo_is_built(out_dir):
        return json.loads(manifest_path.read_text(encoding="utf-8"))

    import peft
    import tokenizers
    import torch
    import transformers

    cfg = config or DemoConfig()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with atomic_build(out_dir, cfg.threads, seed) as tmp_dir:
        # 1. tokenizer
        t0 = time.perf_counter()
        corpus_text = load_corpus_text()
        tokenizer = train_tokenizer(corpus_text, cfg.vocab_size)
        timings["tokenizer_s"] = time.perf_counter() - t0

        # 2. base model
        t0 = time.perf_counter()
        model = make_base_model(tokenizer, cfg, seed)
        pre_stats = pretrain(model, tokenizer, cfg, seed, progress)
        timings["pretrain_s"] = time.perf_counter() - t0
        base_path = base_dir(out_dir)
        model.config._name_or_path = str(base_path)
        model.save_pretrained(base_dir(tmp_dir))
        tokenizer.save_pretrained(base_dir(tmp_dir))

        # 3. adapters
        adapter_stats: dict[str, dict] = {}
        for task in ADAPTER_TASKS:
            t0 = time.perf_counter()
            peft_model, stats = train_adapter(
                model, tokenizer, task, cfg, seed, base_path=str(base_path), progress=progress
            )
            for pcfg in peft_model.peft_config.values():
                pcfg.base_model_name_or_path = str(base_path)
            peft_model.save_pretrained(adapter_dir(tmp_dir, task))
            # PEFT's boilerplate model card embeds the build path: drop it (determinism).
            (adapter_dir(tmp_dir, task) / "README.md").unlink(missing_ok=True)
            model = peft_model.unload()  # drop the LoRA layers: pristine base again
            timings[f"adapter_{task}_s"] = time.perf_counter() - t0
            stats["heldout_examples"] = cfg.heldout_examples
            adapter_stats[task] = stats

        n_params = sum(p.numel() for p in model.parameters())
        timings["total_s"] = time.perf_counter() - t_start
        manifest = {
            "name": "loraplex-demo",
            "seed": seed,
            "prompt_format": {
                "instruction_first": "{instruction}\n\nMessage: {message}\n\nAnswer:",
                "instruction_last": "Message: {message}\n\n{instruction}\n\nAnswer:",
                "completion": " {answer}</s>",
            },
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "tokenizers": tokenizers.__version__,
            },
            "config": cfg.to_dict(),
            "tokenizer": {
                "type": "byte-level BPE, individual digits",
                "vocab_size": len(tokenizer),
                "corpus_sha256": hashlib.sha256(corpus_text.encode("utf-8")).hexdigest(),
                "corpus_bytes": len(corpus_text.encode("utf-8")),
            },
            "base_model": {
                "path": BASE_DIRNAME,
                "architecture": "LlamaForCausalLM",
                "parameters": n_params,
                "pretraining": pre_stats,
            },
            "adapters": {
                task: {"path": f"{ADAPTERS_DIRNAME}/{task}", "task": task, **adapter_stats[task]}
                for task in ADAPTER_TASKS
            },
            "data": {
                "intents": list(demo_data.INTENTS),
                "sentiments": list(demo_data.SENTIMENTS),
                "instruction_phrasings": {
                    t: {
                        "train": len(demo_data.instructions_for(t, "train")),
                        "heldout": len(demo_data.instructions_for(t, "heldout")),
                    }
                    for t in demo_data.TASKS
                },
                "train_examples": dict(cfg.train_examples),
                "heldout_examples": {t: cfg.heldout_examples for t in demo_data.TASKS},
            },
            "files": _dir_files(tmp_dir, tmp_dir),
            "timings": {k: round(v, 2) for k, v in timings.items()},
        }
        (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
