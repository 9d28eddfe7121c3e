"""A prototype head beside the trained one: route to an adapter from a handful of example prompts, no retraining.

**Space.** Prompts are compared in the featurizer's space after two fixed transforms computed from the
trained router's *references* (a sample of its training features per class, saved with it): centering
on their mean and whitening by their within-class covariance (shrunk towards the identity). Raw
sentence features of two prompts with different instructions but similar customer messages are
nearly identical (cosine ~0.9: the message dominates); within-class variation is exactly "same task,
other message, other wording", so whitening by it turns those directions down and the task
directions up. Each class is the unit centroid of its examples there (nearest-centroid few-shot).

**Scores.** `s_c` = cosine of the prompt to class c's centroid; `R` = best cosine to a trained class's
centroid, `S` = best over the prototype classes; margin `m = S - R`.

**Gate: nearest centroid, on the trained head's terms.** A prompt goes to the prototype head only if
it is nearer to a prototype class's centroid than to every trained class's centroid (`m > GATE_MARGIN`
= 0), smoothly:

    g = sigmoid((m - GATE_MARGIN) / GATE_TEMPERATURE)
    p(trained t)   = (1 - g) * p_trained(t)         the trained head's calibrated distribution, unchanged
    p(prototype c) = g * softmax_c(s_c / CLASS_TEMPERATURE)

Why a gate and not one softmax over both heads' scores: the trained head's probabilities are
calibrated (temperature fitted on held-out data) and its classes were learned from hundreds of
prompts; a trained-class prompt lies nearest its own centroid (on the demo's held-out phrasings the
margin is below -0.03 for 99 % of them), so g ~ 0 and its decision and confidence are the trained
head's own: adding a prototype cannot cost it accuracy except where the new adapter's examples really
are nearer. A paraphrase of a prototype class's examples sits well above the margin (median +0.1 to
+0.2 on the demo), so g ~ 1 and the class clears the confidence floor on its own. The margin and
the temperatures were chosen on a development set of phrasings (not the evaluation's; see
docs/routing.md). Prompts the trained router was taught to be unsure about (soft-label rows, such as
a bare customer message) have a centroid of their own on the trained side, so they stay with the
trained head and its low confidence.

A router saved without references (trained before they existed) has no space: raw cosine, and a
fixed bar `NO_REFERENCE_SIMILARITY` for `S` (retrain it to get the calibrated gate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

SHRINKAGE = 0.2  # within-class covariance shrunk this far towards a scaled identity (384 refs, 768 dims)
GATE_MARGIN = 0.0  # cosine margin over the nearest trained centroid a prototype class must beat
GATE_TEMPERATURE = 0.01  # margin scale of the gate: a margin of 0.03 gives g = 0.95
CLASS_TEMPERATURE = 0.02  # among prototype classes
NO_REFERENCE_SIMILARITY = 0.85  # the bar S must clear for a router with no references
UNSURE = ""  # the reference group of soft-label training rows (the trained router was taught to be unsure)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


class ExampleBank:
    """Named classes, each a `[examples, dim]` tensor of featurizer outputs (registration examples,
    learned traffic). A plain container: what the classes mean is decided by `PrototypeHead`."""

    def __init__(self, classes: Mapping[str, torch.Tensor] | None = None):
        self._classes: dict[str, torch.Tensor] = {}
        for name, feats in (classes or {}).items():
            self.set(name, feats)

    def set(self, name: str, feats: torch.Tensor) -> None:
        """Replace class `name`'s examples (`feats: [examples, dim]`; zero rows removes the class)."""
        if feats.ndim != 2:
            raise ValueError(f"example features must be [examples, dim], got shape {tuple(feats.shape)}")
        if feats.shape[0] == 0:
            self._classes.pop(name, None)
            return
        dims = {f.shape[1] for n, f in self._classes.items() if n != name}
        if dims and feats.shape[1] not in dims:
            raise ValueError(f"example features for {name!r} are {feats.shape[1]}-d; this bank is {dims.pop()}-d")
        self._classes[name] = feats.float()

    def remove(self, name: str) -> None:
        self._classes.pop(name, None)

    @property
    def names(self) -> list[str]:
        return list(self._classes)

    def counts(self) -> dict[str, int]:
        return {n: int(f.shape[0]) for n, f in self._classes.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes


class PrototypeSpace:
    """Centering and whitening from the trained router's references (identity without references)."""

    def __init__(self, references: Mapping[str, torch.Tensor] | None):
        refs = {n: normalise(f) for n, f in (references or {}).items()}
        classes = [f for n, f in refs.items() if n != UNSURE]
        if not classes:
            self.mean, self.whiten = None, None
            return
        pooled = torch.cat(classes)  # [refs, dim]
        self.mean = pooled.mean(0)  # [dim]
        within = torch.cat([f - f.mean(0) for f in classes])  # [refs, dim]
        cov = within.T @ within / len(within)  # [dim, dim]
        cov = (1 - SHRINKAGE) * cov + SHRINKAGE * cov.diagonal().mean() * torch.eye(cov.shape[0])
        vals, vecs = torch.linalg.eigh(cov)
        self.whiten = vecs @ torch.diag(vals.clamp_min(1e-8).rsqrt()) @ vecs.T  # [dim, dim]

    @property
    def calibrated(self) -> bool:
        return self.whiten is not None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """`[n, dim]` features -> `[n, dim]` unit vectors in the prototype space."""
        x = normalise(x)
        if self.whiten is None:
            return x
        return normalise((x - self.mean) @ self.whiten)

    def centroid(self, feats: torch.Tensor) -> torch.Tensor:
        return normalise(self.embed(feats).mean(0))  # [dim]


class PrototypeHead:
    """The prototype classes' centroids and the gate threshold for one set of examples and trained classes.

    Built when the examples change (registration, removal, a traffic refresh), not per request."""

    def __init__(
        self,
        space: PrototypeSpace,
        references: Mapping[str, torch.Tensor] | None,
        examples: ExampleBank,
        trained: Sequence[str],
    ):
        refs = dict(references or {})
        given = examples.tensors()
        for name in trained:  # examples of a trained class are more references of it
            if name in given:
                refs[name] = torch.cat([refs[name].float(), given[name]]) if name in refs else given[name]
        self.space = space
        self.trained = list(trained)
        self.prototypes = [n for n in given if n not in trained]
        self.counts = {n: int(given[n].shape[0]) for n in self.prototypes}
        groups = [n for n in refs if n == UNSURE or n in trained]
        self._ref_centroids = (
            torch.stack([space.centroid(refs[n]) for n in groups]) if groups else None
        )  # [groups, dim]
        self._centroids = (
            torch.stack([space.centroid(given[n]) for n in self.prototypes]) if self.prototypes else None
        )  # [prototypes, dim]
        calibrated = space.calibrated and self._ref_centroids is not None
        self.threshold = GATE_MARGIN if calibrated else NO_REFERENCE_SIMILARITY

    def __len__(self) -> int:
        return len(self.prototypes)

    def _margins(self, z: torch.Tensor) -> torch.Tensor:
        best_new = (z @ self._centroids.T).max(-1).values  # [n]
        return best_new - (z @ self._ref_centroids.T).max(-1).values

    def combine(self, x: torch.Tensor, trained_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x: [batch, dim]` features, `trained_probs: [batch, trained]` -> (`[batch, trained + prototypes]`
        probabilities, gate `[batch]`)."""
        batch = x.shape[0]
        if self._centroids is None:
            return trained_probs, torch.zeros(batch)
        z = self.space.embed(x)  # [batch, dim]
        sims = z @ self._centroids.T  # [batch, prototypes]
        if self.space.calibrated and self._ref_centroids is not None:
            margin = sims.max(-1).values - (z @ self._ref_centroids.T).max(-1).values  # [batch]
        else:
            margin = sims.max(-1).values  # [batch], against the fixed bar
        gate = torch.sigmoid((margin - self.threshold) / GATE_TEMPERATURE)  # [batch]
        if trained_probs.shape[1] == 0:
            gate = torch.ones(batch)  # nothing trained is left: the prototypes are all there is
        new = (sims / CLASS_TEMPERATURE).softmax(dim=-1)  # [batch, prototypes]
        return torch.cat([(1 - gate).unsqueeze(1) * trained_probs, gate.unsqueeze(1) * new], dim=1), gate


def sample_references(
    feats: torch.Tensor, labels: Sequence[int], names: Sequence[str], per_class: int, seed: int
) -> dict[str, torch.Tensor]:
    """Up to `per_class` training features per class (and for the unsure group, label -1), a seeded sample."""
    gen = torch.Generator().manual_seed(seed)
    labels_t = torch.tensor(list(labels))
    out: dict[str, torch.Tensor] = {}
    for k, name in [*enumerate(names), (-1, UNSURE)]:
        rows = (labels_t == k).nonzero().flatten()
        if len(rows):
            out[name] = feats[rows[torch.randperm(len(rows), generator=gen)[:per_class]]].float()
    return out
