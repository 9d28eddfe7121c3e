"""Router ingress: OpenAI-compatible HTTP over FastAPI. Validation, routing and response shapes live in
`loraplex.gateway.planner.Gateway`; this file only maps HTTP <-> Gateway <-> expert handles, and errors to statuses."""


import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)
RETRIES = 2  # a replica dying mid-request: retry on another replica, then 503

from loraplex.config.app import AppArgs
from loraplex.gateway.protocol import AdapterRegistration, ChatCompletionRequest, CompletionRequest, RouteRequest, openapi_body
from loraplex.experts.errors import (AdapterNameError, AdapterValidationError, AuthenticationError, CapacityError, ConflictError, PayloadTooLargeError,
                            PermissionDeniedError, RequestError, UnknownAdapterError)
from loraplex.deployments.metrics import IngressMetrics
from loraplex.gateway.auth import AccessControl
from loraplex.gateway.planner import Gateway
from loraplex.gateway.routing_stage import RoutingStage

app = FastAPI(title="loraplex", description="Multi-LoRA serving with per-request composition and MoE routing")

STATUS = [(AuthenticationError, 401, "authentication_error"), (PermissionDeniedError, 403, "permission_error"), (PayloadTooLargeError, 413, "invalid_request_error"),
          (UnknownAdapterError, 404, "not_found_error"), (ConflictError, 409, "conflict_error"), (AdapterNameError, 400, "invalid_request_error"), (AdapterValidationError, 422, "invalid_adapter"),
          (CapacityError, 503, "overloaded_error"), (RequestError, 400, "invalid_request_error")]


def error(status: int, message: str, type_: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": status}}, status_code=status, headers=headers)


def from_exception(e: Exception) -> JSONResponse:
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        msgs = "; ".join(f"{'.'.join(str(p) for p in er['loc'])}: {er['msg']}" for er in e.errors())
        return error(400, msgs, "invalid_request_error", param)
    if isinstance(e, BackPressureError):
        return error(503, f"server overloaded, retry later ({e})", "overloaded_error", headers={"Retry-After": "1"})
    if isinstance(e, REPLICA_GONE):
        return error(503, f"expert replica unavailable, retry later ({type(e).__name__})", "overloaded_error", headers={"Retry-After": "2"})
    for cls, status, type_ in STATUS:
        if isinstance(e, cls):
            return error(status, str(e), type_)
    return error(500, f"internal error: {type(e).__name__}: {e}", "internal_error")


def from_payload(err: dict) -> JSONResponse:
    """An expert's error-as-data back into an HTTP error."""
    cls = next((c for c, _, _ in STATUS if c.__name__ == err["type"]), None)
    status, type_ = next(((s, t) for c, s, t in STATUS if c is cls), (500, "internal_error"))
    return error(status, err["message"], type_)


@serve.deployment
@serve.ingress(app)
class RouterIngress:
    def __init__(self, args: dict, experts: dict):
        from transformers import AutoTokenizer

        self.args = AppArgs(**args)
        self.access = AccessControl(self.args.auth)
        router = None
        if self.args.routing.router_path:
            from loraplex.router.router import Router

            router = Router.load(self.args.routing.router_path)
        self.gateway = Gateway(self.args, router, AutoTokenizer.from_pretrained(self.args.base_model))
        self.routing = RoutingStage(self.args.limits.max_routing_queue)
        self.experts = experts  # group name -> DeploymentHandle
        self.metrics = IngressMetrics()
        self.registry = None
        if self.args.import_roots:
            from loraplex.experts.adapters.registry import AdapterRegistry, linear_shapes

            shapes = linear_shapes(self.args.base_model, self.args.target_modules)
            self.registry = AdapterRegistry(self.args.adapter_roots[0], self.args.import_roots, self.args.adapter_roots, shapes, self.args.max_rank,
                                            list(self.args.group_of), self.args.max_adapter_mb)

    async def _body(self, request: Request, model):
        raw = await request.body()
        if len(raw) > self.args.max_body_bytes:
            raise PayloadTooLargeError(f"request body has {len(raw)} bytes; the limit is {self.args.max_body_bytes}")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as e:  # bad JSON or invalid UTF-8
            raise RequestError(f"body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise RequestError(f"body must be a JSON object, got {type(body).__name__}")
        return model(**body)

    async def _serve(self, request: Request, model, plan_fn, respond, chat: bool):
        plan = None
        try:
            self.access.check(request.headers.get("authorization"))
            body = await self._body(request, model)
            # model "auto" runs the router's encoder: off the event loop, behind a bounded line
            plan = await self.routing.run(plan_fn, body) if self.gateway.uses_router(body.model, body.composition) else plan_fn(body)
            handle = self.experts[plan.group]
            if plan.primary_adapter:
                handle = handle.options(multiplexed_model_id=plan.primary_adapter)
            if plan.stream:
                response = await self._stream(handle, plan, chat)
            else:
                result = await self._generate(handle, plan.payload)
                response = from_payload(result["error"]) if "error" in result else JSONResponse(respond(plan, result))
        except Exception as e:
            response = from_exception(e)
        self.metrics.observe(plan.routing if plan else None, plan.primary_adapter if plan else None, response.status_code)
        return response

    @staticmethod
    async def _generate(handle, payload: dict) -> dict:
        for attempt in range(RETRIES + 1):
            try:
                return await handle.generate.remote(payload)
            except REPLICA_GONE:
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))  # Serve routes the retry to a live replica
        raise AssertionError("unreachable")

    async def _stream(self, handle, plan, chat: bool):
        gen = handle.options(stream=True).generate_stream.remote(plan.payload)
        first = await gen.__anext__()  # an expert-side error arrives before any token: answer it with a status
        if isinstance(first, dict) and "error" in first:
            return from_payload(first["error"])
        g = self.gateway

        async def events():
            finished = False
            try:
                yield g.stream_chunk(plan, chat, "", first=True)
                item = first
                while True:
                    if isinstance(item, dict):
                        if "error" in item:
                            yield f"data: {json.dumps({'error': item['error']})}\n\n"
                        else:
                            yield g.stream_chunk(plan, chat, None, finish=item["finish_reason"])
                            if plan.include_usage:
                                yield g.stream_chunk(plan, chat, None, usage=g.usage(item))
                        break
                    if item:
                        yield g.stream_chunk(plan, chat, item)
                    item = await gen.__anext__()
                yield "data: [DONE]\n\n"
                finished = True
            finally:
                if not finished:
                    gen.cancel()  # client gone mid-stream: the expert's generator closes and frees the batch row

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions", openapi_extra=openapi_body(CompletionRequest))
    async def completions(self, request: Request):
        return await self._serve(request, CompletionRequest, self.gateway.plan_completion, self.gateway.completion_response, chat=False)

    @app.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest))
    async def chat(self, request: Request):
        return await self._serve(request, ChatCompletionRequest, self.gateway.plan_chat, self.gateway.chat_response, chat=True)

    @app.post("/v1/route", openapi_extra=openapi_body(RouteRequest))
    async def route(self, request: Request):
        try:
            self.access.check(request.headers.get("authorization"))
            return JSONResponse(await self.routing.run(self.gateway.explain, await self._body(request, RouteRequest)))
        except Exception as e:
            return from_exception(e)

    async def _admin(self, request: Request, action) -> JSONResponse:
        """Admin key first, then the registry action (returns (body, status))."""
        try:
            self.access.check_admin(request.headers.get("authorization"))
            if self.registry is None:
                raise RequestError("run-time adapter registration is off; set import_roots in the app config")
            out, status = await action()
            self.gateway.invalidate()
            return JSONResponse(out, status_code=status)
        except Exception as e:
            return from_exception(e)

    @app.post("/v1/adapters", openapi_extra=openapi_body(AdapterRegistration))
    async def register_adapter(self, request: Request):
        async def action():
            body = await self._body(request, AdapterRegistration)
            return await asyncio.to_thread(self.registry.register, body.name, body.source), 201

        return await self._admin(request, action)

    @app.delete("/v1/adapters/{name:path}")
    async def remove_adapter(self, name: str, request: Request):
        async def action():
            return await asyncio.to_thread(self.registry.remove, name), 200

        return await self._admin(request, action)

    @app.get("/v1/models")
    async def models(self, request: Request):
        try:
            self.access.check(request.headers.get("authorization"))
        except Exception as e:
            return from_exception(e)
        return JSONResponse(self.gateway.models())

    @app.get("/health")
    async def health(self):
        return {"status": "ok", "groups": sorted(self.experts)}

    @app.get("/v1/stats")
    async def stats(self, request: Request):
        try:
            self.access.check(request.headers.get("authorization"))
        except Exception as e:
            return from_exception(e)
        out = {}
        for name, h in self.experts.items():
            try:
                out[name] = await h.stats.remote()
            except Exception as e:  # a replica restarting must not break the stats endpoint
                out[name] = {"error": str(e)}
        return out
