"""A trained router on disk: `router.safetensors` (network) + `router.json` (featurizer, experts, policy).

The serving side loads it by path; the same object explains a decision (`/v1/route`) and makes it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from loraplex.experts.errors import ConfigError
from loraplex.router.featurizers import Featurizer, make_featurizer
from loraplex.router.network import RouterNet
from loraplex.router.policy import Decision, PolicyConfig, decide
from loraplex.router.prototypes import ExampleBank, PrototypeHead, PrototypeSpace

WEIGHTS_FILE = "router.safetensors"
CONFIG_FILE = "router.json"
REFERENCE_PREFIX = "references/"  # keys of the reference features inside router.safetensors


class Router:
    def __init__(
        self,
        featurizer: Featurizer,
        net: RouterNet,
        experts: Sequence[str],
        policy: PolicyConfig,
        metrics: dict | None = None,
        calibration: float = 1.0,
        references: Mapping[str, torch.Tensor] | None = None,
    ):
        """`calibration`: the temperature fitted on held-out data at training time (`calibrate_temperature`);
        logits are divided by it before the policy's own temperature applies. `references`: a sample of the
        training features per class (`router.prototypes`), what a prototype class must be nearer than."""
        if net.n_experts != len(experts):
            raise ConfigError(
                [f"router network has {net.n_experts} outputs but {len(experts)} experts are named: {list(experts)}"]
            )
        self.featurizer, self.net, self.experts, self.policy = featurizer, net.eval(), list(experts), policy
        self.metrics = metrics or {}
        if not calibration > 0:
            raise ConfigError([f"calibration temperature must be > 0, got {calibration}"])
        self.calibration = float(calibration)
        self.references = {n: f.float() for n, f in (references or {}).items()}
        self.space = PrototypeSpace(self.references)

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        return self.net(self.featurizer.encode(texts)) / self.calibration  # [batch, experts]

    def prototype_head(self, examples: ExampleBank | None = None, unavailable: Collection[str] = ()) -> PrototypeHead:
        """The head `route` combines with the trained one for this set of examples (keyed by adapter:
        registration examples, learned traffic), without the `unavailable` trained classes (removed adapters).
        An example class that is also a trained class adds references to it; any other is a prototype class.
        Build it when the examples change, not per request (it calibrates its gate on the references)."""
        trained = [e for e in self.experts if e not in unavailable]
        bank = ExampleBank({n: f for n, f in (examples.tensors() if examples else {}).items() if n not in unavailable})
        return PrototypeHead(self.space, self.references, bank, trained)

    def route(
        self, texts: Sequence[str], policy: PolicyConfig | None = None, head: PrototypeHead | None = None
    ) -> list[Decision]:
        """Decisions over the trained classes, or over the trained and prototype classes of `head`."""
        policy = policy or self.policy
        if head is None:
            return decide(self.logits(texts), self.experts, policy)
        with torch.inference_mode():
            x = self.featurizer.encode(texts)  # [batch, dim]
            logits = self.net(x) / self.calibration  # [batch, experts]
        keep = [self.experts.index(e) for e in head.trained]
        if not keep and not len(head):
            return [Decision("base", {}, 0.0, {}, fallback=True) for _ in texts]
        # [batch, trained]: renormalised over the adapters still there
        trained_probs = logits[:, keep].softmax(dim=-1) if keep else torch.empty(len(texts), 0)
        probs, _ = head.combine(x, trained_probs)  # [batch, trained + prototypes]
        decisions = decide(probs.clamp_min(1e-12).log(), head.trained + head.prototypes, policy)
        return [_with_head(d, set(head.prototypes)) for d in decisions]

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.net.state_dict().items()}
        if self.references:
            tensors.update({REFERENCE_PREFIX + n: f.contiguous() for n, f in self.references.items()})
        save_file(tensors, str(path / WEIGHTS_FILE))
        cfg = {
            "featurizer": self.featurizer.spec(),
            "experts": self.experts,
            "network": {"dim": self.net.dim, "hidden": self.net.hidden, "dropout": self.net.dropout},
            "policy": {k: getattr(self.policy, k) for k in PolicyConfig.model_fields},
            "calibration_temperature": self.calibration,
            "metrics": self.metrics,
        }
        (path / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))

    @classmethod
    def load(
        cls,
        path: Path | str,
        policy: PolicyConfig | None = None,
        featurizer: Featurizer | None = None,
        base_model: str | None = None,
    ) -> Router:
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise ConfigError(
                [
                    f"no trained router at {str(path)!r} (expected {CONFIG_FILE} and {WEIGHTS_FILE}); run "
                    "scripts/train_router.py"
                ]
            )
        cfg = json.loads((path / CONFIG_FILE).read_text())
        net = RouterNet(cfg["network"]["dim"], len(cfg["experts"]), cfg["network"]["hidden"], cfg["network"]["dropout"])
        tensors = load_file(str(path / WEIGHTS_FILE))
        refs = {k[len(REFERENCE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(REFERENCE_PREFIX)}
        net.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(REFERENCE_PREFIX)})
        feat = featurizer or make_featurizer(cfg["featurizer"], base_model)
        if feat.dim != net.dim:
            raise ConfigError([f"featurizer gives {feat.dim}-d features but the router was trained on {net.dim}-d"])
        policy = policy or PolicyConfig(**cfg["policy"])
        return cls(
            feat,
            net,
            cfg["experts"],
            policy,
            cfg.get("metrics"),
            cfg.get("calibration_temperature", 1.0),
            refs,
        )


def _with_head(d: Decision, prototypes: set[str]) -> Decision:
    """Mark which head decided: the prototype head when the most probable class is one of its classes."""
    top = max(d.probs, key=d.probs.get) if d.probs else None
    return replace(d, head="prototype" if top in prototypes else "trained")
