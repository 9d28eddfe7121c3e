"""Joint training of the MoE router and the LoRA experts (plain torch + PEFT-format I/O, no Ray).

The separate pipeline (``loraplex.demo.build`` + ``loraplex.demo.router_training``) trains each adapter on its
own task and then a router on frozen features. Here both are trained *together* on the mixed multi-task
stream, with soft routing, in one loop:

* a frozen base model (``models/demo/base``);
* ``n`` LoRA experts living side by side in every targeted ``nn.Linear`` (:class:`MixedLoraLinear`),
  initialised exactly like a fresh PEFT adapter with the demo's ``LoraConfig`` (kaiming-uniform ``A``,
  zero ``B``) -- or, with ``init="demo"``, from the trained demo adapters;
* a :class:`~loraplex.router.network.RouterNet` over the base model's mean-pooled last hidden state of the
  prompt, computed with every adapter disabled (exactly what
  :class:`~loraplex.router.featurizers.HiddenStateFeaturizer` computes at serving time), standardised during
  training (:class:`StandardizedRouter`) and folded back into a plain ``RouterNet`` for saving;
* soft routing: per example the router's softmax is cut to its top-k (k=2 by default) and
  renormalised, giving gate weights ``w`` (zeros outside the top-k). Every targeted layer returns
  ``base(x) + sum_i w_i * scale_i * B_i A_i x`` -- the same delta blend the engine runs for a
  ``{"mode": "moe", "top_k": k}`` request -- differentiable in ``w`` (so in the router) and in every
  selected ``A_i, B_i``. An unselected expert (``w_i = 0``) gets exactly zero gradient from that row.

Loss = answer-token CE + ``balance_coef`` * Switch load balancing + ``z_coef`` * router z-loss
+ ``router_ce_coef`` * CE(router, task label) (off by default: then the router learns only from the
LM loss and the auxiliary losses, i.e. the experts are free to specialise however helps the loss).

Note on ``top_k=1``: renormalising a single probability gives the constant 1, so the router would get
no gradient from the LM loss; ``renormalize=False`` (Switch-Transformer style, gate = raw probability)
is the differentiable alternative for k=1.

Outputs are ordinary artefacts: each expert saves as a PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``, loadable by ``peft.PeftModel.from_pretrained`` and
``loraplex.experts.adapters.store``) and the router as a :class:`~loraplex.router.router.Router` folder.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from loraplex.demo import data as demo_data
from loraplex.demo.build import LORA_TARGET_MODULES, DemoConfig, collate_supervised, encode_supervised
from loraplex.demo.training_loop import progress_bar, warmup_cosine
from loraplex.experts.lora.targets import target_linears
from loraplex.router.featurizers import HiddenStateFeaturizer
from loraplex.router.losses import expert_share, load_balancing_loss, routing_entropy, soft_cross_entropy, z_loss
from loraplex.router.network import RouterNet
from loraplex.router.policy import PolicyConfig
from loraplex.router.router import Router

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_DEMO = DemoConfig()


# --------------------------------------------------------------------------- #
# The differentiable multi-LoRA layer
# --------------------------------------------------------------------------- #


class MixContext:
    """Shared state every :class:`MixedLoraLinear` reads: per-row gate weights ``[batch, n]`` or None."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None

    @contextmanager
    def use(self, weights: torch.Tensor | None) -> Iterator[None]:
        prev, self.weights = self.weights, weights
        try:
            yield
        finally:
            self.weights = prev


class MixedLoraLinear(nn.Module):
    """``base(x) + sum_i w[row, i] * scale * B_i (A_i x)`` for ``n`` LoRA experts of equal rank.

    ``A_i: [r, in]``, ``B_i: [out, r]`` (PEFT's shapes). Implemented as two matmuls over the experts'
    concatenated ``A``/``B``: ``h = x A_cat^T`` (``[.., n*r]``), scaled per row by each expert's gate
    weight, then ``h B_cat^T``. That is exactly the weighted sum of the individual deltas, and an
    expert whose weight is 0 in a row contributes nothing -- value or gradient -- for that row.
    With no weights set (``ctx.weights is None``) the layer is the bare base layer.
    """

    def __init__(
        self, base: nn.Linear, n_experts: int, r: int, alpha: float, ctx: MixContext, use_rslora: bool = False
    ):
        super().__init__()
        self.base, self.ctx, self.n_experts, self.r = base, ctx, n_experts, r
        self.scale = alpha / math.sqrt(r) if use_rslora else alpha / r
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.ParameterList(
            [nn.Parameter(torch.empty(r, base.in_features, device=dev, dtype=dt)) for _ in range(n_experts)]
        )
        self.lora_B = nn.ParameterList(
            [nn.Parameter(torch.zeros(base.out_features, r, device=dev, dtype=dt)) for _ in range(n_experts)]
        )
        for a in self.lora_A:  # PEFT's default LoRA init (init_lora_weights=True): B stays zero
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        w = self.ctx.weights
        if w is None:
            return y
        a = torch.cat(list(self.lora_A), dim=0)  # [n*r, in]
        b = torch.cat(list(self.lora_B), dim=1)  # [out, n*r]
        gate = (w.to(x.dtype) * self.scale).repeat_interleave(self.r, dim=1)  # [batch, n*r]
        h = F.linear(x, a) * gate.view(gate.shape[0], *([1] * (x.dim() - 2)), gate.shape[1])
        return y + F.linear(h, b)


class LoraMixer:
    """Installs :class:`MixedLoraLinear` in every targeted linear of a causal LM; saves/loads experts."""

    def __init__(
        self,
        model: nn.Module,
        experts: Sequence[str],
        r: int = _DEMO.lora_r,
        alpha: float = _DEMO.lora_alpha,
        target_modules: Sequence[str] = LORA_TARGET_MODULES,
        use_rslora: bool = False,
    ):
        self.model, self.experts, self.r, self.alpha = model, list(experts), r, alpha
        self.target_modules, self.use_rslora = list(target_modules), use_rslora
        self.ctx = MixContext()
        self.layers: dict[str, MixedLoraLinear] = {}
        for p in model.parameters():
            p.requires_grad_(False)
        # the engine's own rule (last name component or glob, never the LM head): the mixer wraps exactly
        # the layers a served adapter with these target_modules would touch
        targets = target_linears(model, self.target_modules)
        if not targets:
            raise ValueError(f"target_modules {self.target_modules} match no nn.Linear of the model")
        for name, mod in targets.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = MixedLoraLinear(mod, len(self.experts), r, alpha, self.ctx, use_rslora)
            setattr(parent, child, layer)
            self.layers[name] = layer

    # ---- parameters -----------------------------------------------------------------------
    def parameters(self, expert: int | None = None) -> list[nn.Parameter]:
        idx = range(len(self.experts)) if expert is None else [expert]
        return [p for layer in self.layers.values() for i in idx for p in (layer.lora_A[i], layer.lora_B[i])]

    def use(self, weights: torch.Tensor | None):
        """Context manager: run the model with per-row gate weights ``[batch, n]`` (None = base only)."""
        return self.ctx.use(weights)

    def remove(self) -> nn.Module:
        """Put the original linears back; returns the pristine base model."""
        for name, layer in self.layers.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, layer.base)
        self.layers = {}
        return self.model

    # ---- PEFT-format I/O --------------------------------------------------------------------
    def state_dict_for(self, expert: int) -> dict[str, torch.Tensor]:
        """PEFT keys, e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
        out = {}
        for name, layer in self.layers.items():
            out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A[expert].detach().cpu().contiguous().clone()
            out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B[expert].detach().cpu().contiguous().clone()
        return out

    def lora_config(self, base_path: str | None = None):
        from peft import LoraConfig

        return LoraConfig(
            task_type="CAUSAL_LM",
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            target_modules=list(self.target_modules),
            use_rslora=self.use_rslora,
            base_model_name_or_path=base_path,
        )

    def save_adapter(self, expert: int, path: Path, base_path: str | None = None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.lora_config(base_path).save_pretrained(str(path))
        save_file(self.state_dict_for(expert), str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        return path

    def load_adapter(self, expert: int, path: Path) -> None:
        """Copy a PEFT adapter's weights (same rank/alpha/targets) into expert slot ``expert``."""
        import json

        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / "adapter_config.json").read_text())
        if (
            int(cfg["r"]) != self.r
            or float(cfg["lora_alpha"]) != float(self.alpha)
            or bool(cfg.get("use_rslora")) != self.use_rslora
        ):
            raise ValueError(
                f"{path}: r={cfg['r']} alpha={cfg['lora_alpha']} rslora={cfg.get('use_rslora')} "
                f"does not match the mixer (r={self.r}, alpha={self.alpha}, rslora={self.use_rslora})"
            )
        state = load_file(str(path / ADAPTER_WEIGHTS))
        missing = []
        with torch.no_grad():
            for name, layer in self.layers.items():
                for which, params in (("A", layer.lora_A), ("B", layer.lora_B)):
                    key = f"{PEFT_PREFIX}{name}.lora_{which}.weight"
                    if key not in state:
                        key = f"{PEFT_PREFIX}{name}.lora_{which}.default.weight"
                    if key in state:
                        params[expert].copy_(state[key])
                    else:  # PEFT adapter that does not target this layer: a zero delta there
                        missing.append(key)
                        params[expert].zero_()
        if len(missing) == 2 * len(self.layers):
            raise ValueError(f"{path}: no LoRA weights match the mixer's layers")


# --------------------------------------------------------------------------- #
# Routing
# --------------------------------------------------------------------------- #


def gate_weights(logits: torch.Tensor, top_k: int, renormalize: bool = True) -> torch.Tensor:
    """Dense soft-routing weights ``[batch, n]``: softmax, keep the top-k, renormalise (zeros elsewhere).

    Differentiable w.r.t. ``logits`` through the kept probabilities (the selection itself is not).
    With ``top_k=1`` and ``renormalize=True`` the weight is the constant 1 (no router gradient);
    ``renormalize=False`` keeps the raw probability (Switch-Transformer gating).
    """
    probs = logits.softmax(dim=-1)
    vals, idx = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    if renormalize:
        vals = vals / vals.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, idx, vals)


def answer_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The causal-LM loss of ``model(..., labels=labels).loss`` (mean CE over the non ``-100`` labels,
    shifted by one), but the LM head only runs on the answer positions instead of the whole sequence."""
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # [answer tokens, vocab]
    return F.cross_entropy(logits.float(), target[keep])


class StandardizedRouter(nn.Module):
    """``net((x - mean) / std)``: the router sees standardised features during training.

    Mean-pooled hidden states share a large common component (here |mean| ~ 0.9 |x|), so a freshly
    initialised router gives nearly the same logits to every prompt and routes everything to one
    expert before any expert has learned anything. Standardising makes the initial routing depend on
    the input. :meth:`folded` bakes the affine map into the first linear layer, so the saved router is
    a plain :class:`RouterNet` on raw features (what ``Router``/``HiddenStateFeaturizer`` serve).
    """

    def __init__(self, net: RouterNet, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    @torch.no_grad()
    def folded(self) -> RouterNet:
        """A copy of ``net`` with ``W' = W / std``, ``b' = b - W' mean``: same logits on raw features."""
        import copy

        net = copy.deepcopy(self.net)
        first = net.layers[0]
        first.weight.div_(self.std)
        first.bias.sub_(first.weight @ self.mean)
        return net


def prompt_features(featurizer: HiddenStateFeaturizer, mixer: LoraMixer, prompts: Sequence[str]) -> torch.Tensor:
    """Router input: mean-pooled last hidden state of the prompt with every adapter disabled."""
    with mixer.use(None):
        feats = featurizer.encode(list(prompts))
    return feats.clone()  # out of inference mode: a normal tensor autograd may save


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def joint_lora_lr(recorded: float | dict[str, float]) -> float:
    """One optimiser trains every expert: the largest of the demo's per-task LoRA LRs.

    Older manifests record a single LR.
    """
    return max(recorded.values()) if isinstance(recorded, dict) else float(recorded)


@dataclass(frozen=True)
class JointConfig:
    steps: int = sum(_DEMO.lora_steps.values())  # the demo's three adapter runs together
    batch: int = _DEMO.lora_batch
    top_k: int = 2
    renormalize: bool = True
    lora_lr: float = joint_lora_lr(_DEMO.lora_lr)
    router_lr: float = 2e-3
    router_weight_decay: float = 1e-4
    warmup: int = _DEMO.lora_warmup
    router_hidden: int = 256
    router_dropout: float = 0.1
    balance_coef: float = 0.01
    z_coef: float = 1e-3
    router_ce_coef: float = 0.0  # > 0: also supervise the router with the task label
    router_noise: float = 0.0  # std of Gaussian noise on the router logits for the gate (training only)
    standardize_features: bool = True  # see StandardizedRouter
    init: str = "fresh"  # "fresh" (PEFT default init) or "demo" (start from the trained demo adapters)
    experts: tuple[str, ...] = demo_data.TASKS
    # the mixed stream: each task's share of the examples follows the demo's per-task step counts, so
    # at the default step count every task sees as many examples as its separately trained adapter did
    task_mix: dict[str, int] = field(default_factory=lambda: dict(_DEMO.lora_steps))
    train_examples: dict[str, int] = field(default_factory=lambda: dict(_DEMO.train_examples))
    lora_r: int = _DEMO.lora_r
    lora_alpha: int = _DEMO.lora_alpha
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class JointResult:
    mixer: LoraMixer
    router_net: RouterNet
    featurizer: HiddenStateFeaturizer
    history: list[dict]
    stats: dict


def mixed_stream(tokenizer, cfg: JointConfig) -> list[list[tuple[tuple[list[int], int], str, int]]]:
    """``cfg.steps`` shuffled mixed-task batches of ``((ids, n_prompt), prompt, task_index)``."""
    total = cfg.steps * cfg.batch
    weight_sum = sum(cfg.task_mix[t] for t in cfg.experts)
    counts = {t: round(total * cfg.task_mix[t] / weight_sum) for t in cfg.experts}
    counts[cfg.experts[-1]] += total - sum(counts.values())
    rng = random.Random(cfg.seed * 1000 + 7)
    pool: list[tuple[tuple[list[int], int], str, int]] = []
    for ti, task in enumerate(cfg.experts):
        examples = demo_data.make_examples(task, cfg.train_examples[task], cfg.seed, "train")
        encoded = encode_supervised(tokenizer, examples)
        order: list[int] = []
        while len(order) < counts[task]:  # epochs over the task's data, reshuffled each pass
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        pool.extend((encoded[i], examples[i].prompt, ti) for i in order[: counts[task]])
    rng.shuffle(pool)
    return [pool[i * cfg.batch : (i + 1) * cfg.batch] for i in range(cfg.steps)]


def train_joint(
    base_model,
    tokenizer,
    cfg: JointConfig,
    base_path: str | None = None,
    init_adapters: Mapping[str, Path] | None = None,
    progress: bool = True,
) -> JointResult:
    """Train the router and the experts together on the mixed stream; ``base_model`` stays frozen.

    ``base_model`` gets :class:`MixedLoraLinear` layers installed (``result.mixer.remove()`` undoes it).
    ``init_adapters`` (expert -> PEFT folder) is required when ``cfg.init == "demo"``.
    """
    if cfg.init not in ("fresh", "demo"):
        raise ValueError(f"init must be 'fresh' or 'demo', got {cfg.init!r}")
    t_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed * 1000 + 101)
    base_model.eval()  # no dropout in the frozen base; LoRA dropout is 0 as in the demo
    mixer = LoraMixer(base_model, cfg.experts, cfg.lora_r, cfg.lora_alpha)
    if cfg.init == "demo":
        if not init_adapters:
            raise ValueError("init='demo' needs init_adapters {expert: adapter folder}")
        for i, name in enumerate(cfg.experts):
            mixer.load_adapter(i, Path(init_adapters[name]))
    lora_params = mixer.parameters()
    for p in lora_params:
        p.requires_grad_(True)
    featurizer = HiddenStateFeaturizer(base_model, tokenizer, "mean", path=base_path)
    net = RouterNet(featurizer.dim, len(cfg.experts), cfg.router_hidden, cfg.router_dropout)
    batches = mixed_stream(tokenizer, cfg)
    if cfg.standardize_features:  # statistics from the first (shuffled, mixed) training prompts
        calib = [b[1] for batch in batches[:8] for b in batch]
        x = torch.cat([prompt_features(featurizer, mixer, calib[i : i + 64]) for i in range(0, len(calib), 64)])
        router: nn.Module = StandardizedRouter(net, x.mean(0), x.std(0).clamp_min(1e-4))
    else:
        router = net
    opt = torch.optim.AdamW(
        [
            {"params": lora_params, "lr": cfg.lora_lr, "weight_decay": _DEMO.weight_decay},
            {"params": list(net.parameters()), "lr": cfg.router_lr, "weight_decay": cfg.router_weight_decay},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.steps))
    n = len(cfg.experts)
    history: list[dict] = []
    window: list[dict] = []
    router.train()
    bar = progress_bar(batches, len(batches), "joint router+adapters", progress)
    for step, batch in enumerate(bar):
        items = [b[0] for b in batch]
        prompts = [b[1] for b in batch]
        tasks = torch.tensor([b[2] for b in batch])
        input_ids, attention, labels = collate_supervised(items, tokenizer.pad_token_id)
        feats = prompt_features(featurizer, mixer, prompts)
        logits = router(feats)  # [batch, n]
        gate_logits = logits + cfg.router_noise * torch.randn_like(logits) if cfg.router_noise > 0 else logits
        w = gate_weights(gate_logits, cfg.top_k, cfg.renormalize)
        with mixer.use(w):
            ce = answer_loss(base_model, input_ids, attention, labels)
        bal = load_balancing_loss(logits)
        zl = z_loss(logits)
        rce = soft_cross_entropy(logits, F.one_hot(tasks, n).float())
        loss = ce + cfg.balance_coef * bal + cfg.z_coef * zl
        if cfg.router_ce_coef > 0:
            loss = loss + cfg.router_ce_coef * rce
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params, 1.0)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            acc = float((logits.argmax(-1) == tasks).float().mean())
            window.append(
                {
                    "loss": float(loss),
                    "ce": float(ce),
                    "balance": float(bal),
                    "z": float(zl),
                    "router_ce": float(rce),
                    "router_acc": acc,
                    "entropy": float(routing_entropy(logits.softmax(-1))),
                }
            )
        if step % 10 == 9 or step == len(batches) - 1:
            with torch.no_grad():
                share = expert_share(logits)
            entry = {
                "step": step + 1,
                **{k: round(sum(d[k] for d in window) / len(window), 5) for k in window[0]},
                "share": [round(float(s), 3) for s in share],
            }
            history.append(entry)
            window = []
            bar.set_postfix(ce=f"{entry['ce']:.4f}", racc=f"{entry['router_acc']:.2f}", bal=f"{entry['balance']:.2f}")
    router.eval()
    net = router.folded() if isinstance(router, StandardizedRouter) else net
    net.eval()
    for p in lora_params:
        p.requires_grad_(False)
    stats = {
        "wall_s": round(time.perf_counter() - t_start, 2),
        "cpu_s": round(time.process_time() - cpu_start, 2),  # this process's CPU time: less load-dependent than wall
        "steps": cfg.steps,
        "examples_seen": cfg.steps * cfg.batch,
        "trainable_params": {
            "lora": sum(p.numel() for p in lora_params),
            "router": sum(p.numel() for p in net.parameters()),
        },
        "final": history[-1] if history else {},
    }
    return JointResult(mixer, net, featurizer, history, stats)


def save_joint(
    result: JointResult, out: Path, base_path: str | None = None, metrics: dict | None = None
) -> dict[str, Path]:
    """``out/adapters/{expert}`` (PEFT folders) and ``out/router`` (``Router.save``)."""
    out = Path(out)
    paths = {}
    for i, name in enumerate(result.mixer.experts):
        paths[name] = result.mixer.save_adapter(i, out / "adapters" / name, base_path)
    router = Router(result.featurizer, result.router_net, result.mixer.experts, PolicyConfig(), metrics)
    router.save(out / "router")
    paths["router"] = out / "router"
    return paths
