"""Typed errors keep their class across the replica hop and map to HTTP in one place."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import threading

import pytest
from pydantic import ValidationError

from loraplex.experts import errors
from loraplex.gateway.http_errors import http_error
from loraplex.gateway.protocol import CompletionRequest
from loraplex.gateway.routing_stage import RoutingStage

# class name, constructor args, status, OpenAI type, Retry-After
CASES = [
    ("LoraplexError", ("x",), 500, "internal_error", None),
    ("InternalError", ("x",), 500, "internal_error", None),
    ("RequestError", ("x",), 400, "invalid_request_error", None),
    ("UnknownAdapterError", ("zz", ["a", "b"]), 404, "not_found_error", None),
    ("UnknownCompositionError", ("zz", ["a"]), 404, "not_found_error", None),
    ("HubAdapterError", ("hub adapter x is not cached",), 404, "not_found_error", None),
    ("CompositionError", ("x",), 400, "invalid_request_error", None),
    ("SamplingError", ("x",), 400, "invalid_request_error", None),
    ("AdapterNameError", ("x",), 400, "invalid_request_error", None),
    ("ConflictError", ("x",), 409, "conflict_error", None),
    ("RouteNotFoundError", ("x",), 404, "not_found_error", None),
    ("MethodNotAllowedError", ("x",), 405, "invalid_request_error", None),
    ("PayloadTooLargeError", ("x",), 413, "invalid_request_error", None),
    ("AdapterValidationError", ("a", ["bad rank", "bad shape"]), 422, "invalid_adapter", None),
    ("AuthenticationError", ("x",), 401, "authentication_error", None),
    ("PermissionDeniedError", ("x",), 403, "permission_error", None),
    ("CapacityError", ("x",), 503, "overloaded_error", "1"),
    ("UnavailableError", ("x",), 503, "overloaded_error", "2"),
    ("ConfigError", (["p1", "p2"],), 500, "configuration_error", None),
    ("DatasetError", ("data.jsonl", ["data.jsonl:3: bad"]), 400, "invalid_request_error", None),
    ("RouterReloadError", ("x",), 422, "invalid_router", None),
]


def make(name: str, args: tuple) -> errors.LoraplexError:
    return getattr(errors, name)(*args)


def test_the_table_covers_every_error_class():
    classes = {n for n, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.LoraplexError)}
    assert classes == {c[0] for c in CASES}


@pytest.mark.parametrize("name,args,status,type_,retry", CASES, ids=[c[0] for c in CASES])
def test_status_type_and_retry_after_survive_pickling(name, args, status, type_, retry):
    """Ray pickles a replica's answer; the ingress must see the same class, message and fields."""
    e = make(name, args)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and str(back) == str(e) and back.__dict__ == e.__dict__
    err = http_error(back)
    assert (err.status, err.body["error"]["type"], err.body["error"]["code"]) == (status, type_, status)
    assert err.body["error"]["message"] == str(e)
    assert err.headers.get("Retry-After") == retry


def test_validation_errors_name_the_field_and_unknown_exceptions_are_500():
    with pytest.raises(ValidationError) as v:
        CompletionRequest(model="a", prompt="x", best_of=2)
    err = http_error(v.value)
    assert err.status == 400 and err.body["error"]["param"] == "best_of"
    err = http_error(KeyError("boom"))
    assert err.status == 500 and "KeyError" in err.body["error"]["message"]


def test_a_full_routing_queue_answers_503_with_retry_after():
    """Defect 1: the routing stage's CapacityError fell to the generic path and lost its Retry-After header."""
    gate = threading.Event()

    async def main():
        stage = RoutingStage(max_waiting=1)
        busy = asyncio.ensure_future(stage.run(gate.wait, 5))
        await asyncio.sleep(0.05)
        try:
            await stage.run(gate.wait, 5)
        except Exception as e:
            return e
        finally:
            gate.set()
            await busy

    err = http_error(asyncio.run(main()))
    assert err.status == 503 and err.headers == {"Retry-After": "1"}
    assert "limits.max_routing_queue=1" in err.body["error"]["message"]
