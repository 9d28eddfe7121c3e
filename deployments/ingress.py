"""Router ingress: OpenAI-compatible HTTP over FastAPI. Planning, routing, response shapes, body checks and the
error mapping live in `loraplex.gateway`; this file only maps HTTP <-> gateway <-> expert handles, and turns
Ray's own exceptions into typed errors.

No `from __future__ import annotations` here: FastAPI reads the route signatures (`request: Request`) at
run time, and string annotations inside a Serve-wrapped class make it treat `request` as a body field (422).
"""

import asyncio
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException

from loraplex.config.app import AppArgs
from loraplex.deployments.metrics_board import Pusher
from loraplex.experts.errors import (
    CapacityError,
    LoraplexError,
    MethodNotAllowedError,
    RequestError,
    RouteNotFoundError,
    UnavailableError,
)
from loraplex.experts.protocol import GenerationPayload, Outcome
from loraplex.experts.request import Result
from loraplex.gateway import responses
from loraplex.gateway.auth import AccessControl
from loraplex.gateway.generation_defaults import generation_defaults
from loraplex.gateway.http_errors import http_error
from loraplex.gateway.planner import Gateway
from loraplex.gateway.protocol import (
    AdapterRegistration,
    ChatCompletionRequest,
    CompletionRequest,
    CompositionRegistration,
    LoadLoraAdapter,
    RouteRequest,
    UnloadLoraAdapter,
    openapi_body,
)
from loraplex.gateway.request_body import parse_body, read_limited
from loraplex.gateway.router_reload import RouterReloader
from loraplex.gateway.routing_stage import RoutingStage
from loraplex.observability.metrics import IngressMetrics
from loraplex.observability.request_log import access_line, request_id

access_log = logging.getLogger("ray.serve")
REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)
RETRIES = 2  # a replica dying mid-request: retry on another replica, then 503

app = FastAPI(title="loraplex", description="Multi-LoRA serving with per-request composition and MoE routing")


def typed(e: Exception) -> Exception:
    """Ray's exceptions as our typed errors (the mapping to HTTP stays in one place, `gateway.http_errors`)."""
    if isinstance(e, RayTaskError) and isinstance(e.cause, Exception):  # raised inside a replica method
        return typed(e.cause)
    if isinstance(e, BackPressureError):
        return CapacityError(f"server overloaded, retry later ({e})")
    if isinstance(e, REPLICA_GONE):
        return UnavailableError(f"expert replica unavailable, retry later ({type(e).__name__})")
    return e


def error_response(e: Exception) -> JSONResponse:
    err = http_error(typed(e))
    return JSONResponse(err.body, status_code=err.status, headers=err.headers or None)


def _routes() -> list[str]:
    return sorted({f"{m} {r.path}" for r in app.routes for m in getattr(r, "methods", ()) if m != "HEAD"})


@app.exception_handler(HTTPException)
async def _framework_errors(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown routes and methods in the OpenAI error shape too (FastAPI's default is `{"detail": ...}`)."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return error_response(RouteNotFoundError(f"no route {where}; routes: {', '.join(_routes())}"))
    if exc.status_code == 405:
        allowed = [r.split(" ", 1)[0] for r in _routes() if r.split(" ", 1)[1] == request.url.path]
        return error_response(MethodNotAllowedError(f"{where} is not allowed; methods for this route: {allowed}"))
    return error_response(RequestError(f"{where}: {exc.detail}"))


@app.exception_handler(RequestValidationError)
async def _validation_errors(request: Request, exc: RequestValidationError) -> JSONResponse:
    msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return error_response(RequestError(f"{request.method} {request.url.path}: {msgs}"))


def serve_http_host() -> str | None:
    """The host Serve's HTTP proxies bind, from the controller's HTTP options (None if it cannot be read)."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:
        return None


@serve.deployment
@serve.ingress(app)
class RouterIngress:
    def __init__(self, args: dict, experts: dict, board):
        from transformers import AutoTokenizer

        self.args = AppArgs(**args)
        self.access = AccessControl(self.args.auth, serve_http_host())  # refuses an open public server
        router = None
        if self.args.routing.router_path:
            from loraplex.router.router import Router

            router = Router.load(self.args.routing.router_path)
        self.gateway = Gateway(
            self.args,
            router,
            AutoTokenizer.from_pretrained(self.args.base_model),
            sampling_defaults=generation_defaults(self.args.base_model),
        )
        self.reloader = None
        if router is not None:
            self.reloader = RouterReloader(
                self.args.routing.router_path, router, self._install_router, self.gateway.check_router_experts
            )
            if self.args.routing.reload_interval_s:
                self.reloader.poll(self.args.routing.reload_interval_s)
        self.gateway.refresh_routing()  # embed the adapters' routing examples before the first request
        self.routing = RoutingStage(self.args.limits.max_routing_queue)
        self._learning: set[asyncio.Task] = set()
        self.experts = experts  # group name -> DeploymentHandle
        self.metrics = IngressMetrics()
        self.board = board
        self.pusher = Pusher(board, "ingress", None, self._collect)
        self.registry = None
        if self.args.import_roots:
            from loraplex.experts.adapters.registry import AdapterRegistry, linear_shapes

            a = self.args
            shapes = linear_shapes(a.base_model, a.target_modules)
            self.registry = AdapterRegistry(
                a.adapter_roots[0],
                a.import_roots,
                a.adapter_roots,
                shapes,
                a.max_rank,
                list(a.group_of),
                a.max_adapter_mb,
                in_use=self.gateway.compositions.using,
            )

    def _collect(self) -> tuple[str, dict]:
        self.metrics.adapters_on_disk.set(len(self.gateway.adapters()))
        return self.metrics.render(), {}

    def __del__(self):
        if getattr(self, "pusher", None) is not None:
            self.pusher.stop()

    def _install_router(self, router) -> None:
        self.gateway.router = router  # one assignment: in-flight requests keep the router they read

    async def _body(self, request: Request, model):
        raw = await read_limited(request.stream(), self.args.max_body_bytes, request.headers.get("content-length"))
        return parse_body(raw, model)

    async def _serve(self, request: Request, model, plan_fn, respond, chat: bool):
        t0 = time.perf_counter()
        rid = request_id(request.headers.get("x-request-id"))
        plan = body = None
        try:
            self.access.check(request.headers.get("authorization"))
            body = await self._body(request, model)
            # model "auto" runs the router's encoder: off the event loop, behind a bounded line
            uses_router = self.gateway.uses_router(body.model, body.composition)
            plan = await self.routing.run(plan_fn, body) if uses_router else plan_fn(body)
            if not body.request_id:
                plan.id = rid
            for part in plan.parts:
                part.payload["request_id"] = plan.id
            if plan.stream:
                return await self._stream(
                    self._handle(plan), plan, chat, lambda *a: self._record(t0, chat, body, plan, *a)
                )
            results = await asyncio.gather(*(self._generate(self._handle(p), p.payload) for p in plan.parts))
            failed = [r for r in results if isinstance(r, LoraplexError)]
            response = error_response(failed[0]) if failed else JSONResponse(respond(plan, results))
            ok = [r for r in results if isinstance(r, Result)]
            usage = responses.usage(ok) if ok else None
            self._record(t0, chat, body, plan, response.status_code, usage, ok[0].timing if ok else None)
        except Exception as e:
            response = error_response(e)
            self._record(t0, chat, body, plan, response.status_code, None, None, rid)
        return response

    def _record(self, t0, chat: bool, body, plan, status: int, usage, timing, rid: str | None = None) -> None:
        """Metrics, the access line, and (opt-in) the traffic example, once the request is answered."""
        latency = time.perf_counter() - t0
        routing = plan.routing if plan else None
        adapter = plan.primary_adapter if plan else None
        self.metrics.observe(routing, adapter, status, latency, usage)
        access_log.info(
            access_line(
                request_id=plan.id if plan else rid,
                route="chat" if chat else "completions",
                status=status,
                latency_s=latency,
                model=getattr(body, "model", None),
                adapter=adapter,
                group=(routing or {}).get("group"),
                mode=(routing or {}).get("mode"),
                stream=bool(plan and plan.stream),
                usage=usage,
                timing=timing,
                user=getattr(body, "user", None),
            )
        )
        if plan is not None and plan.learn_text and status < 400:
            self._learn(plan.model, plan.learn_text)

    def _handle(self, plan):
        """The expert group's handle, with the request's adapter as the replica-affinity key."""
        handle = self.experts[plan.group]
        return handle.options(multiplexed_model_id=plan.primary_adapter) if plan.primary_adapter else handle

    def _learn(self, adapter: str, text: str) -> None:
        """Offer a request that named its adapter to the traffic reservoir, in the background and only when the
        routing stage is idle: learning must never queue in front of a request."""
        if self.routing.waiting:
            return

        async def learn():
            try:
                await self.routing.run(self.gateway.learn, adapter, text)
                self.metrics.observe_examples(self.gateway.examples.counts())
            except Exception:  # a full stage or an encoder hiccup costs one sample, nothing else
                pass

        task = asyncio.ensure_future(learn())
        self._learning.add(task)  # keep a reference until it finishes
        task.add_done_callback(self._learning.discard)

    @staticmethod
    async def _generate(handle, payload: GenerationPayload) -> Outcome:
        for attempt in range(RETRIES + 1):
            try:
                return await handle.generate.remote(payload)
            except REPLICA_GONE:
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))  # Serve routes the retry to a live replica
        raise AssertionError("unreachable")

    async def _stream(self, handle, plan, chat: bool, record):
        gen = handle.options(stream=True).generate_stream.remote(plan.payload)
        first = await gen.__anext__()  # an expert-side error arrives before any token: answer it with a status
        if isinstance(first, LoraplexError):
            response = error_response(first)
            record(response.status_code, None, None)
            return response

        async def events():
            finished = False
            status, usage, timing = 499, None, None  # 499: the client went away before the end
            try:
                text = first if isinstance(first, str) else ""
                yield responses.stream_chunk(plan, chat, text, first=True)
                item = await gen.__anext__() if isinstance(first, str) else first
                while True:
                    if isinstance(item, LoraplexError):
                        status = http_error(item).status
                        yield responses.stream_error(http_error(item).body)
                        break
                    if isinstance(item, Result):
                        status, usage, timing = 200, item.usage, item.timing
                        yield responses.stream_chunk(plan, chat, None, finish=item.finish_reason)
                        if plan.include_usage:
                            yield responses.stream_chunk(plan, chat, None, usage=item.usage)
                        break
                    yield responses.stream_chunk(plan, chat, item)  # empty deltas too: a token without text
                    item = await gen.__anext__()
                yield responses.DONE
                finished = True
            finally:
                if not finished:
                    gen.cancel()  # client gone mid-stream: the expert's generator closes and frees the batch row
                record(status, usage, timing)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions", openapi_extra=openapi_body(CompletionRequest))
    async def completions(self, request: Request):
        return await self._serve(
            request, CompletionRequest, self.gateway.plan_completion, responses.completion_response, chat=False
        )

    @app.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest))
    async def chat(self, request: Request):
        return await self._serve(
            request, ChatCompletionRequest, self.gateway.plan_chat, responses.chat_response, chat=True
        )

    @app.post("/v1/route", openapi_extra=openapi_body(RouteRequest))
    async def route(self, request: Request):
        try:
            self.access.check(request.headers.get("authorization"))
            return JSONResponse(await self.routing.run(self.gateway.explain, await self._body(request, RouteRequest)))
        except Exception as e:
            return error_response(e)

    async def _admin(self, request: Request, action, needs_registry: bool = True) -> JSONResponse:
        """Admin key first, then the action (returns (body, status))."""
        try:
            self.access.check_admin(request.headers.get("authorization"))
            if needs_registry and self.registry is None:
                raise RequestError("run-time adapter registration is off; set import_roots in the app config")
            out, status = await action()
            await asyncio.to_thread(self.gateway.invalidate)  # re-reads the journal: off the event loop
            if isinstance(out, str):  # the vLLM-compatible endpoints answer a plain-text line
                return PlainTextResponse(out, status_code=status)
            return JSONResponse(out, status_code=status)
        except Exception as e:
            return error_response(e)

    @app.post("/v1/adapters", openapi_extra=openapi_body(AdapterRegistration))
    async def register_adapter(self, request: Request):
        async def action():
            body = await self._body(request, AdapterRegistration)
            out = await asyncio.to_thread(self.registry.register, body.name, body.source, body.routing_examples)
            await self._refresh_routing()
            return out, 201

        return await self._admin(request, action)

    @app.post("/v1/load_lora_adapter", openapi_extra=openapi_body(LoadLoraAdapter))
    async def load_lora_adapter(self, request: Request):
        """vLLM-compatible registration: the same validated, confined registry as `POST /v1/adapters`; answers
        vLLM's plain-text success line so tools written for vLLM read it unchanged."""

        async def action():
            body = await self._body(request, LoadLoraAdapter)
            await asyncio.to_thread(self.registry.register, body.lora_name, body.lora_path, None)
            await self._refresh_routing()
            return f"Success: LoRA adapter '{body.lora_name}' added successfully.", 200

        return await self._admin(request, action)

    @app.post("/v1/unload_lora_adapter", openapi_extra=openapi_body(UnloadLoraAdapter))
    async def unload_lora_adapter(self, request: Request):
        async def action():
            body = await self._body(request, UnloadLoraAdapter)
            await asyncio.to_thread(self.registry.remove, body.lora_name)
            await self._refresh_routing()
            return f"Success: LoRA adapter '{body.lora_name}' removed successfully.", 200

        return await self._admin(request, action)

    @app.delete("/v1/adapters/{name:path}")
    async def remove_adapter(self, name: str, request: Request):
        async def action():
            out = await asyncio.to_thread(self.registry.remove, name)
            await self._refresh_routing()
            return out, 200

        return await self._admin(request, action)

    @app.post("/v1/compositions", openapi_extra=openapi_body(CompositionRegistration))
    async def register_composition(self, request: Request):
        async def action():
            body = await self._body(request, CompositionRegistration)
            return await asyncio.to_thread(self.gateway.register_composition, body), 201

        return await self._admin(request, action)

    @app.delete("/v1/compositions/{name:path}")
    async def remove_composition(self, name: str, request: Request):
        async def action():
            return await asyncio.to_thread(self.gateway.remove_composition, name), 200

        return await self._admin(request, action)

    @app.get("/v1/compositions")
    async def list_compositions(self, request: Request):
        try:
            self.access.check(request.headers.get("authorization"))
            return JSONResponse(self.gateway.list_compositions())
        except Exception as e:
            return error_response(e)

    async def _refresh_routing(self) -> None:
        """Embed a new adapter's routing examples (or drop a removed one's) before the admin call returns."""
        await asyncio.to_thread(self.gateway.refresh_routing)
        self.metrics.observe_examples(self.gateway.examples.counts())

    @app.get("/v1/adapters/{name:path}")
    async def describe_adapter(self, name: str, request: Request):
        try:
            self.access.check(request.headers.get("authorization"))
            return JSONResponse(await asyncio.to_thread(self.gateway.describe_adapter, name))
        except Exception as e:
            return error_response(e)

    @app.post("/v1/router/reload")
    async def reload_router(self, request: Request):
        """Swap in the router now on disk (this replica; the others pick it up at their poll interval)."""

        async def action():
            if self.reloader is None:
                raise RequestError("no router is configured (routing.router_path); nothing to reload")
            return await asyncio.to_thread(self.reloader.reload, True), 200

        return await self._admin(request, action, needs_registry=False)

    @app.get("/v1/models")
    async def models(self, request: Request):
        try:
            self.access.check(request.headers.get("authorization"))
        except Exception as e:
            return error_response(e)
        return JSONResponse(self.gateway.models())

    @app.get("/health")
    async def health(self):
        """Ready (200) once every group has a replica that pushed its metrics in the last seconds (it finished
        loading and its event loop answers); 503 naming the groups still starting."""
        try:
            live = await self.board.groups.remote()
        except Exception as e:  # the board itself is (re)starting
            return JSONResponse({"status": "starting", "reason": f"metrics board unavailable: {e}"}, status_code=503)
        groups = {g: live.get(g, 0) for g in sorted(self.experts)}
        waiting = [g for g, n in groups.items() if not n]
        if waiting:
            return JSONResponse({"status": "starting", "groups": groups, "waiting_for": waiting}, status_code=503)
        return {"status": "ok", "groups": groups}

    @app.get("/metrics")
    async def prometheus(self):
        """Every replica's metrics (ingress and experts) in Prometheus text format, labelled by role,
        deployment (group) and replica. No API key: keep the serving port's /metrics off the public path, as
        for any Prometheus target."""
        try:
            await self.pusher.push_async()  # this replica's latest, before the render
            text = await self.board.exposition.remote()
        except Exception as e:
            return error_response(UnavailableError(f"metrics board unavailable, retry later ({e})"))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/stats")
    async def stats(self, request: Request):
        """Per group: every live replica's engine counters and their sums (`total`)."""
        try:
            self.access.check(request.headers.get("authorization"))
            return JSONResponse(await self.board.stats.remote())
        except Exception as e:
            return error_response(typed(e))
