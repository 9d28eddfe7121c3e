"""Every typed error raised on the expert side reaches the HTTP client with its own status (a real Serve hop).

A stand-in expert deployment answers each request with the error class its prompt names, returned as a
value (what replicas do) or raised out of the deployment method (what a bug would do); the real
`RouterIngress` maps both over real HTTP.
"""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import PORT, demo_args
from tests.unit.test_http_errors import CASES, make


@pytest.fixture(scope="module")
def errors_app(server, roots):
    from ray import serve

    from loraplex.deployments.ingress import RouterIngress
    from loraplex.deployments.metrics_board import MetricsBoard

    def stand_in():  # defined in a function so Ray pickles the class by value
        @serve.deployment(ray_actor_options={"num_cpus": 0})
        class RaisingExpert:
            async def generate(self, payload):
                name, how = payload["prompt"].split(":")
                err = make(name, dict((c[0], c[1]) for c in CASES)[name])
                if how == "raise":
                    raise err
                return err

            async def generate_stream(self, payload):
                yield await self.generate(payload)

        return RaisingExpert

    args = demo_args(*roots)
    args["routing"]["router_path"] = None
    args["import_roots"] = []
    Expert = stand_in()
    experts = {g["name"]: Expert.options(name=f"raising_{g['name']}").bind() for g in args["groups"]}
    ingress = RouterIngress.options(name="errors_ingress", ray_actor_options={"num_cpus": 0})
    board = MetricsBoard.options(name="errors_board").bind()
    serve.run(ingress.bind(args, experts, board), name="errors", route_prefix="/errors")
    yield f"http://127.0.0.1:{PORT}/errors"
    serve.delete("errors")


@pytest.mark.parametrize("how", ["return", "raise"])
@pytest.mark.parametrize("name,args,status,type_,retry", CASES, ids=[c[0] for c in CASES])
def test_expert_side_errors_keep_their_status(errors_app, how, name, args, status, type_, retry):
    for stream in (False, True):
        body = {"temperature": 0, "model": "base", "prompt": f"{name}:{how}", "stream": stream}
        r = httpx.post(f"{errors_app}/v1/completions", json=body, timeout=60)
        assert r.status_code == status, (stream, r.text)
        err = r.json()["error"]
        assert (err["type"], err["code"]) == (type_, status)
        assert err["message"].splitlines()[0] == str(make(name, args)).splitlines()[0]
        assert r.headers.get("retry-after") == retry
