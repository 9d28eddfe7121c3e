"""A trained router on disk: `router.safetensors` (network) + `router.json` (featurizer, experts, policy).

The serving side loads it by path; the same object explains a decision (`/v1/route`) and makes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from loraplex.experts.errors import ConfigError
from loraplex.router.featurizers import Featurizer, make_featurizer
from loraplex.router.network import RouterNet
from loraplex.router.policy import Decision, PolicyConfig, decide

WEIGHTS_FILE = "router.safetensors"
CONFIG_FILE = "router.json"


class Router:
    def __init__(
        self,
        featurizer: Featurizer,
        net: RouterNet,
        experts: Sequence[str],
        policy: PolicyConfig,
        metrics: dict | None = None,
        calibration: float = 1.0,
    ):
        """`calibration`: the temperature fitted on held-out data at training time (`calibrate_temperature`);
        logits are divided by it before the policy's own temperature applies."""
        if net.n_experts != len(experts):
            raise ConfigError(
                [f"router network has {net.n_experts} outputs but {len(experts)} experts are named: {list(experts)}"]
            )
        self.featurizer, self.net, self.experts, self.policy = featurizer, net.eval(), list(experts), policy
        self.metrics = metrics or {}
        if not calibration > 0:
            raise ConfigError([f"calibration temperature must be > 0, got {calibration}"])
        self.calibration = float(calibration)

    @torch.inference_mode()
    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        return self.net(self.featurizer.encode(texts)) / self.calibration  # [batch, experts]

    def route(self, texts: Sequence[str], policy: PolicyConfig | None = None) -> list[Decision]:
        return decide(self.logits(texts), self.experts, policy or self.policy)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(path / WEIGHTS_FILE))
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
        net.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        feat = featurizer or make_featurizer(cfg["featurizer"], base_model)
        if feat.dim != net.dim:
            raise ConfigError([f"featurizer gives {feat.dim}-d features but the router was trained on {net.dim}-d"])
        policy = policy or PolicyConfig(**cfg["policy"])
        return cls(feat, net, cfg["experts"], policy, cfg.get("metrics"), cfg.get("calibration_temperature", 1.0))
