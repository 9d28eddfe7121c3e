"""The ingress's planning without Serve or HTTP: validate an OpenAI body, resolve its composition (a named
adapter, an explicit composition, or the MoE router's choice), pick the expert group and build the
replica payload. Response shapes live in `gateway.responses`; typed errors raised here become HTTP
statuses in `gateway.http_errors`. Unit tests call this class directly.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from loraplex.config.app import AppArgs, NamedComposition
from loraplex.experts.adapters import routing_examples
from loraplex.experts.adapters.index import MARKER, AdapterIndex
from loraplex.experts.adapters.sources import HubSource, check_hub_ref, is_hub_ref
from loraplex.experts.adapters.store import adapter_folder, check_name
from loraplex.experts.composition import Base, Blend, Chain, Moe, Stack, adapters_of, parse_composition, weight_rows
from loraplex.experts.errors import (
    CompositionError,
    ConfigError,
    ConflictError,
    LoraplexError,
    RequestError,
    UnknownAdapterError,
)
from loraplex.experts.protocol import GenerationPayload
from loraplex.experts.sampling import SamplingParams, sampling_payload
from loraplex.gateway.compositions import CompositionBook
from loraplex.gateway.generation_defaults import OPENAI_DEFAULTS
from loraplex.gateway.protocol import ChatCompletionRequest, CompletionRequest, RouteRequest
from loraplex.gateway.routing_examples import RoutingExamples
from loraplex.router.policy import BASE
from loraplex.router.reservoir import Reservoir

RESERVED_MODELS = ("base", "auto")
ALTERNATIVES = 2  # runner-up classes `/v1/route` and auto responses list after the winner


@dataclass
class Plan:
    """Where a request goes and what the expert runs."""

    group: str
    payload: GenerationPayload  # prompt, composition, sampling: what a replica's submit takes
    routing: dict[str, Any]  # {"mode", "weights", "group", "confidence"}: returned to the client
    model: str
    primary_adapter: str | None  # replica-affinity key (multiplexed model id)
    stream: bool = False
    include_usage: bool = False
    learn_text: str | None = None  # the routing text of a request that named one adapter (a labelled example)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))
    echo: str | None = None  # completions echo: the prompt text that goes before the completion
    more: list[Plan] = field(
        default_factory=list
    )  # a completion listing several prompts: one plan per prompt after the first
    n: int = 1

    @property
    def parts(self) -> list[Plan]:
        """This plan and its siblings, one per prompt, in prompt order."""
        return [self, *self.more]


class Gateway:
    def __init__(
        self,
        args: AppArgs,
        router=None,
        tokenizer=None,
        sampling_defaults: dict[str, float] | None = None,
        index: AdapterIndex | None = None,
    ):
        self.args = args
        self.router = router
        self.tokenizer = tokenizer
        self.sampling_defaults = {**OPENAI_DEFAULTS, **(sampling_defaults or {})}  # see gateway.generation_defaults
        self.policy = args.routing  # a PolicyConfig: the app's routing knobs, one source of their defaults
        # adapter names in memory: registrations show at once (journal), hand-dropped folders by a background scan
        self.index = index or AdapterIndex(
            args.adapter_roots, args.adapter_roots[0] if args.import_roots else None, args.adapter_scan_interval_s
        )
        self.hub = HubSource(args.hub) if args.hub.enabled else None
        self.compositions = CompositionBook(args.compositions, args.adapter_roots[0] if args.import_roots else None)
        routing = args.routing
        reservoir = Reservoir(routing.traffic_examples_per_adapter) if routing.learn_from_traffic else None
        # registered adapters' example prompts (and learned traffic): the prototype head beside the trained one
        self.examples = RoutingExamples(self.index, reservoir, routing.traffic_min_examples)
        if router is not None:
            self.check_router_experts()
        problems = []
        for name, named in args.compositions.items():
            try:
                self.check_composition(name, named, configured=True)
            except LoraplexError as e:
                problems.append(f"compositions.{name}: {e}")
        if problems:
            raise ConfigError(problems)

    def check_router_experts(self, router=None) -> None:
        """At start-up (and before a reload swaps a router in): a router naming adapters the roots do not hold
        would fail `auto` requests one by one at run time; refuse it, naming the missing and existing adapters."""
        router = router or self.router
        missing = [e for e in router.experts if e != BASE and e not in self.adapters()]
        if missing:
            raise ConfigError(
                [
                    f"the router at routing.router_path routes to adapter(s) {missing} that no adapter root holds; "
                    f"adapters: {self.adapters()}. Retrain the router (scripts/train_router.py --data) or add them."
                ]
            )

    # ---- names -----------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        """Adapters on disk under the roots, from the index (no walk per call)."""
        return self.index.names()

    def invalidate(self) -> None:
        """Re-read the registry's journal now (after a run-time registration or removal)."""
        self.index.sync()

    def model_ids(self) -> list[str]:
        return (
            ["base"] + (["auto"] if self.router is not None else []) + list(self.compositions.all()) + self.adapters()
        )

    def models(self) -> dict:
        group_of = self.args.group_of
        data = [
            {
                "id": m,
                "object": "model",
                "created": 0,
                "owned_by": "loraplex",
                "group": group_of.get(m, self.args.fallback_group) if m != "auto" else None,
            }
            for m in ["base"] + (["auto"] if self.router is not None else []) + self.adapters()
        ]
        for name, (named, source) in self.compositions.all().items():
            spec = named.spec()
            entry = {"id": name, "object": "model", "created": 0, "owned_by": "loraplex"}
            entry["group"] = self.group_for(parse_composition(spec))
            entry["composition"] = {"definition": spec, "source": source}  # loraplex extension field
            if named.description:
                entry["composition"]["description"] = named.description
            if named.fit:
                entry["composition"]["fit"] = dict(named.fit)
            data.append(entry)
        return {"object": "list", "data": data}

    def check_composition(self, name: str, named: NamedComposition, configured: bool = False) -> None:
        """Raise the first problem of a named composition: its name (syntax, reserved, shadowing an adapter),
        its definition, the adapters it uses (they exist; none is itself a composition: no nesting, so no
        cycles) and the limits of the group that would run it."""
        check_name(name)
        if name in RESERVED_MODELS:
            raise CompositionError(f"composition name {name!r} is reserved ({', '.join(RESERVED_MODELS)})")
        if name in self.index or (self.hub is not None and self.hub.matches(name)):
            raise ConflictError(f"composition name {name!r} shadows an adapter of that name; pick another name")
        comp = parse_composition(named.spec())
        for a in adapters_of(comp):
            if a == name or (self.compositions.get(a) is not None and not is_hub_ref(a)):
                raise CompositionError(
                    f"composition {name!r} uses {a!r}, which is a composition; compositions cannot nest (that "
                    "would allow cycles): list the adapters themselves"
                )
            self._check_adapter(a)
        self._check_limits(name, comp)

    def register_composition(self, body) -> dict:
        """`POST /v1/compositions` (a `gateway.protocol.CompositionRegistration`)."""
        named = NamedComposition(composition=body.composition, description=body.description, fit=body.fit)
        self.check_composition(body.name, named)
        self.compositions.register(body.name, named)
        return {"name": body.name, "object": "composition", "definition": named.spec(), "created": True}

    def remove_composition(self, name: str) -> dict:
        self.compositions.remove(name)
        return {"name": name, "object": "composition", "deleted": True}

    def list_compositions(self) -> dict:
        data = [
            {"name": n, "object": "composition", "definition": c.spec(), "source": src, "description": c.description}
            for n, (c, src) in self.compositions.all().items()
        ]
        return {"object": "list", "data": data}

    def _check_limits(self, name: str, comp) -> None:
        group = next(g for g in self.args.groups if g.name == self.group_for(comp))
        used = adapters_of(comp)
        rows, _ = weight_rows(comp) if not isinstance(comp, Chain) else ([{}], [1.0])
        if group.engine == "native":
            if len(used) > group.max_slots:
                raise CompositionError(
                    f"composition {name!r} uses {len(used)} adapters; group {group.name!r} has max_slots="
                    f"{group.max_slots}"
                )
            if len(rows) > group.batch_rows:
                raise CompositionError(
                    f"composition {name!r} needs {len(rows)} rows; group {group.name!r} has max_batch_rows="
                    f"{group.batch_rows}"
                )
            return
        opts = group.vllm_options
        if isinstance(comp, (Stack, Blend, Moe)) and len(rows) == 1 and len(used) > 1:
            rank = sum(self._rank(a) for a in used)  # merged into one adapter of the summed rank
            if rank > opts.max_lora_rank:
                raise CompositionError(
                    f"composition {name!r} merges {len(used)} adapters into rank {rank} on vLLM group "
                    f"{group.name!r}, over its vllm.max_lora_rank={opts.max_lora_rank}; use fewer adapters or raise it"
                )

    def _rank(self, adapter: str) -> int:
        """The adapter's largest rank, from its config (no weights read); 0 for hub adapters (checked at load)."""
        entry = self.index.entry(adapter)
        if entry is None:
            return 0
        try:
            cfg = json.loads((entry.path / "adapter_config.json").read_text())
        except (OSError, ValueError):
            return 0
        return max([int(cfg.get("r", 0))] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()])

    def _check_adapter(self, name: str) -> None:
        """Local adapters by the index; hub references by syntax and the allowed repos (the replica fetches)."""
        if is_hub_ref(name):
            check_hub_ref(self.hub, name)
            return
        check_name(name)
        if name in self.index or (self.hub is not None and self.hub.matches(name)):
            return
        raise UnknownAdapterError(name, self.model_ids())

    # ---- resolution --------------------------------------------------------------------------
    @staticmethod
    def uses_router(model: str, composition: Any) -> bool:
        """Whether `resolve` runs the MoE router (the CPU-heavy step the ingress keeps off its event loop)."""
        return (model == "auto" and composition is None) or Gateway.router_weighted(composition)

    @staticmethod
    def router_weighted(composition: Any) -> bool:
        """A `moe` composition without `weights`: the router supplies them (its probabilities over adapters)."""
        return isinstance(composition, dict) and composition.get("mode") == "moe" and "weights" not in composition

    def _router_weights(self, composition: dict, text: str) -> dict:
        """`composition` with the router's probabilities as its weights (the `base` class carries no adapter)."""
        router = self.router
        if router is None:
            raise RequestError(
                "a moe composition without 'weights' takes the router's weights, but no router is configured "
                "(routing.router_path); give 'weights' explicitly"
            )
        if not text:
            raise RequestError("a moe composition without 'weights' routes on text; send the prompt as a string")
        probs = router.route([text], self.policy, self.prototype_head(router))[0].probs
        weights = {a: p for a, p in probs.items() if a != BASE and p > 0}
        return {**composition, "weights": weights}

    def resolve(self, model: str, composition: Any, text: str) -> tuple[Any, dict]:
        """(composition spec for the expert, routing info) for a model name and/or composition object."""
        named = self.compositions.get(model)
        if named is not None:
            if composition is not None:
                raise RequestError(
                    f"model {model!r} is a named composition; send it without 'composition' (or name an adapter)"
                )
            spec = named.spec()
            comp = parse_composition(spec)
            for name in adapters_of(comp):
                self._check_adapter(name)  # an adapter removed by hand since the composition was made
            return spec, {**self._routing(comp, None), "composition": model}
        if composition is not None:
            if self.router_weighted(composition):
                composition = self._router_weights(composition, text)
            comp = parse_composition(composition)
            if not isinstance(model, str):
                raise UnknownAdapterError(model, self.model_ids())
            if model not in RESERVED_MODELS:
                self._check_adapter(model)
            for name in adapters_of(comp):
                self._check_adapter(name)
            return composition, self._routing(comp, None)
        if model == "base":
            return None, self._routing(Base(), None)
        if model == "auto":
            router = self.router  # read once: a reload may swap it while this request routes
            if router is None:
                raise UnknownAdapterError("auto", self.model_ids())
            decision = router.route([text], self.policy, self.prototype_head(router))[0]
            spec = decision.composition()
            return spec, self._routing(parse_composition(spec), decision.confidence, decision)
        self._check_adapter(model)
        return model, self._routing(parse_composition(model), None)

    def prototype_head(self, router, force: bool = False):
        """The prototype head for the adapters served now; a registration on any replica shows at once (the
        index re-reads the registry's journal when its stamp moves)."""
        return self.examples.head(router, self.adapters(), force)

    def refresh_routing(self) -> None:
        """After a registration or removal on this replica: embed its examples before the call returns."""
        router = self.router
        self.invalidate()
        if router is not None:
            self.examples.head(router, self.adapters(), force=True)

    def learn(self, adapter: str, text: str) -> bool:
        """A request that named `adapter`: offer its routing text to the traffic reservoir (opt-in)."""
        router = self.router
        if router is None or adapter not in self.index:
            return False
        return self.examples.learn(router, adapter, text)

    def describe_adapter(self, name: str) -> dict:
        """`GET /v1/adapters/{name}`: where it lives, its group, and how `auto` knows it."""
        self._check_adapter(name)
        folder = adapter_folder(self.args.adapter_roots, name)
        router = self.router
        counts = self.examples.counts().get(name, {})
        return {
            "name": name,
            "object": "adapter",
            "group": self.args.group_of.get(name, self.args.fallback_group),
            "registered": (folder / MARKER).is_file(),
            "routing": {
                "trained": router is not None and name in router.experts,
                "routing_examples": len(routing_examples.read_examples(folder)),
                "traffic_examples": counts.get("traffic", 0),
            },
        }

    def _routing(self, comp, confidence: float | None, decision=None) -> dict:
        if isinstance(comp, Chain):
            weights = {a: 1.0 for a in adapters_of(comp)}
        elif isinstance(comp, Moe):
            weights = dict(comp.selected())
        else:
            rows, mix = weight_rows(comp)
            weights = {n: w for r in rows for n, w in r.items()}
            if len(rows) > 1:  # logits blend: report the mixing weights
                weights = {n: m for r, m in zip(rows, mix) for n in r}
        mode = "auto" if decision is not None else type(comp).__name__.lower()
        if decision is not None and decision.fallback:
            mode = f"auto:fallback_{self.policy.fallback}"
        info = {
            "mode": mode,
            "weights": weights,
            "group": self.group_for(comp),
            "confidence": None if confidence is None else round(confidence, 4),
        }
        if decision is not None:
            info["probs"] = decision.probs
            info["head"] = decision.head  # which head decided: "trained" (the classifier) or "prototype" (examples)
            ranked = sorted(decision.probs.items(), key=lambda kv: -kv[1])
            info["alternatives"] = [{"adapter": name, "prob": prob} for name, prob in ranked[1 : ALTERNATIVES + 1]]
        return info

    def group_for(self, comp) -> str:
        """The group pinning most of the composition's adapters (first adapter breaks ties); a logits-space
        blend goes to such a group among those that can run it (engine native)."""
        group_of, engine_of = self.args.group_of, self.args.engine_of
        names = list(adapters_of(comp))
        if isinstance(comp, Moe):
            names = [n for n, _ in comp.selected()]
        logits = isinstance(comp, Blend) and comp.space == "logits"
        votes: dict[str, int] = {}
        for n in names:
            g = group_of.get(n)
            if g is not None and not (logits and engine_of[g] != "native"):
                votes[g] = votes.get(g, 0) + 1
        if not votes:
            if not logits or engine_of[self.args.fallback_group] == "native":
                return self.args.fallback_group
            native = [g for g, e in engine_of.items() if e == "native"]
            if not native:
                groups = ", ".join(f"{g} ({e})" for g, e in engine_of.items())
                raise CompositionError(
                    "logits-space blends run only on groups with engine native, and this app has none "
                    f"(groups: {groups}); use blend space 'delta', which every engine runs"
                )
            return native[0]
        return max(votes, key=lambda g: (votes[g], -[group_of.get(n) for n in names].index(g)))

    # ---- requests ----------------------------------------------------------------------------
    def _sampling(self, req) -> SamplingParams:
        limits = self.args.limits
        max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
        max_tokens = limits.default_max_tokens if max_tokens is None else max_tokens
        if max_tokens > limits.max_tokens_limit:
            raise RequestError(f"max_tokens {max_tokens} exceeds this server's limit of {limits.max_tokens_limit}")
        echo = isinstance(req, CompletionRequest) and req.echo
        if isinstance(req, ChatCompletionRequest):
            if req.top_logprobs is not None and not req.logprobs:
                raise RequestError("top_logprobs needs logprobs: true")
            logprobs = (req.top_logprobs or 0) if req.logprobs else None
        else:
            logprobs = req.logprobs
        if req.stream and (req.n > 1 or logprobs is not None or echo):
            raise RequestError(
                "streaming supports n=1 without logprobs or echo; send stream: false for n > 1, logprobs or echo"
            )
        if req.response_format is not None and req.structured_outputs is not None:
            raise RequestError("send response_format or structured_outputs, not both")
        structured = None
        fmt, so = req.response_format, req.structured_outputs
        if (fmt is not None and fmt.type == "json_object") or (so is not None and so.json_object):
            structured = ("json_object", "")
        elif fmt is not None and fmt.json_schema is not None:
            structured = ("json_schema", json.dumps(fmt.json_schema.schema_))
        elif so is not None:
            structured = ("json_schema", so.json_ if isinstance(so.json_, str) else json.dumps(so.json_))
        try:
            bias = tuple((int(t), b) for t, b in (req.logit_bias or {}).items())
        except ValueError:
            raise RequestError(f"logit_bias keys must be token ids, got {sorted(req.logit_bias)[:5]}") from None
        d = self.sampling_defaults

        def pick(name: str):
            v = getattr(req, name)
            return d[name] if v is None else v

        top_k = pick("top_k")
        prompt_lp = None  # echo scores the prompt when logprobs are asked for, or when it is all there is to do
        if echo and (logprobs is not None or max_tokens == 0):
            prompt_lp = logprobs or 0
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=pick("temperature"),
            top_p=pick("top_p"),
            top_k=0 if top_k == -1 else top_k,  # vLLM: -1 or 0 = off
            stop=req.stop if req.stop is not None else (),
            seed=req.seed,
            ignore_eos=req.ignore_eos,
            n=req.n,
            logprobs=logprobs,
            prompt_logprobs=prompt_lp,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=pick("repetition_penalty"),
            min_p=pick("min_p"),
            min_tokens=req.min_tokens,
            logit_bias=bias,
            structured=structured,
            stop_token_ids=tuple(req.stop_token_ids or ()),
            include_stop_str=req.include_stop_str_in_output,
            skip_special_tokens=req.skip_special_tokens,
            allowed_token_ids=tuple(req.allowed_token_ids) if req.allowed_token_ids is not None else None,
        )  # validates, raises SamplingError
        return params

    def _check_prompt_chars(self, n: int) -> None:
        if n == 0:
            raise RequestError("prompt must not be empty")
        if n > self.args.limits.max_prompt_chars:
            raise RequestError(f"prompt has {n} characters; the limit is {self.args.limits.max_prompt_chars}")

    def prompts(self, prompt) -> list[str | list[int]]:
        """A completion's `prompt` as a list of prompts (text or token ids), within the server's limit."""
        if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
            return [prompt]
        if not prompt:
            raise RequestError("prompt must not be empty")
        if len(prompt) > self.args.limits.max_prompts:
            raise RequestError(
                f"prompt lists {len(prompt)} prompts; this server takes at most {self.args.limits.max_prompts} "
                "per request (limits.max_prompts)"
            )
        return list(prompt)

    def plan_completion(self, req: CompletionRequest) -> Plan:
        params = self._sampling(req)
        prompts = self.prompts(req.prompt)
        if len(prompts) > 1 and req.stream:
            raise RequestError("streaming takes one prompt; send stream: false for a list of prompts")
        plans = [self._plan_prompt(req, p, params) for p in prompts]
        plans[0].more = plans[1:]
        return plans[0]

    def _plan_prompt(self, req: CompletionRequest, prompt: str | list[int], params: SamplingParams) -> Plan:
        text = prompt if isinstance(prompt, str) else ""
        self._check_prompt_chars(len(text) if text else len(prompt))
        if isinstance(prompt, list) and self.uses_router(req.model, req.composition):
            raise RequestError("model 'auto' routes on text; send the prompt as a string")
        spec, routing = self.resolve(req.model, req.composition, text)
        chain = isinstance(parse_composition(spec), Chain)
        if text and req.add_special_tokens is False and not chain and self.tokenizer is not None:
            prompt = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        payload = {"prompt": prompt, "composition": spec, "sampling": sampling_payload(params)}
        plan = self._plan(req, payload, params, routing, text)
        if req.echo:
            plan.echo = text if text else self.tokenizer.decode(prompt) if self.tokenizer is not None else ""
        return plan

    def _chat_messages(self, req: ChatCompletionRequest) -> list[dict]:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in req.messages]
        last = messages[-1]["role"]
        if req.continue_final_message:
            if last != "assistant":
                raise RequestError("continue_final_message needs the last message to be from the assistant")
            if req.add_generation_prompt:
                raise RequestError("continue_final_message and add_generation_prompt cannot both be true")
        elif last == "assistant":
            raise RequestError(
                "the last message must be from the user or system, not 'assistant' "
                "(or set continue_final_message: true and add_generation_prompt: false)"
            )
        return messages

    def plan_chat(self, req: ChatCompletionRequest) -> Plan:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise RequestError("this base model has no chat template; use /v1/completions")
        messages = self._chat_messages(req)
        self._check_prompt_chars(sum(len(m["content"]) for m in messages))
        params = self._sampling(req)
        text = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
        spec, routing = self.resolve(req.model, req.composition, text)
        if isinstance(parse_composition(spec), Chain):
            prompt: str | list[int] = text  # chain templates embed the user text themselves
        else:
            try:
                rendered = self.tokenizer.apply_chat_template(
                    messages,
                    add_generation_prompt=req.add_generation_prompt,
                    continue_final_message=req.continue_final_message,
                    tokenize=False,
                    **(req.chat_template_kwargs or {}),
                )
            except Exception as e:  # a template that raises on these messages (e.g. roles it refuses) or kwargs
                raise RequestError(f"the chat template cannot render these messages: {e}") from None
            prompt = list(self.tokenizer(rendered, add_special_tokens=bool(req.add_special_tokens))["input_ids"])
        payload = {"prompt": prompt, "composition": spec, "sampling": sampling_payload(params)}
        return self._plan(req, payload, params, routing, text)

    def _plan(self, req, payload: dict, params: SamplingParams, routing: dict, text: str = "") -> Plan:
        comp = parse_composition(payload["composition"])
        names = [n for n, _ in comp.selected()] if isinstance(comp, Moe) else list(adapters_of(comp))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        named = req.composition is None and req.model not in RESERVED_MODELS and bool(text)
        plan = Plan(
            routing["group"],
            payload,
            routing,
            req.model,
            names[0] if names else None,
            req.stream,
            include_usage,
            learn_text=text if named and self.examples.reservoir is not None else None,
            n=params.n,
        )
        if req.request_id:
            plan.id = req.request_id
        return plan

    def explain(self, req: RouteRequest) -> dict:
        self._check_prompt_chars(len(req.prompt))
        spec, routing = self.resolve(req.model, req.composition, req.prompt)
        return {"composition": spec, "routing": routing}
