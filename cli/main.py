"""`loraplex`: the console script. `serve [CONFIG]` starts the app (after validating its args),
`route PROMPT` explains a routing decision, `adapters list|add|remove` manages run-time adapters,
`train-router ...` trains the MoE router. The HTTP commands talk to a running server (`--url`, default
http://127.0.0.1:8000; keys from environment variables, never flags, so they stay out of shell history).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

DEFAULT_URL = os.environ.get("LORAPLEX_URL", "http://127.0.0.1:8000")
APP_IMPORT = "loraplex.deployments.app:build_app"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loraplex", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="validate a Serve YAML's loraplex apps, then `serve run` it")
    s.add_argument("config", nargs="?", default="config/serve.yaml", help="Serve config (default: %(default)s)")
    s.add_argument("--check", action="store_true", help="only validate the config (every problem at once), then exit")

    def http(sp: argparse.ArgumentParser, key_env: str) -> None:
        sp.add_argument("--url", default=DEFAULT_URL, help="server root (default: $LORAPLEX_URL or %(default)s)")
        sp.add_argument("--key-env", default=key_env, help="environment variable holding the bearer key (%(default)s)")

    r = sub.add_parser("route", help="which adapter(s) `model: auto` would use for PROMPT, and why")
    r.add_argument("prompt")
    r.add_argument("--model", default="auto", help="as in completions (default: %(default)s)")
    http(r, "LORAPLEX_API_KEY")

    a = sub.add_parser("adapters", help="list, add or remove adapters on a running server")
    asub = a.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = asub.add_parser("list", help="the adapters and models the server offers, with their groups")
    http(ls, "LORAPLEX_API_KEY")
    add = asub.add_parser("add", help="register a PEFT adapter folder (inside the app's import_roots)")
    add.add_argument("name", help="adapter name, path-like allowed (e.g. team/refunds)")
    add.add_argument("source", help="the adapter folder, as the server sees it")
    add.add_argument("--example", action="append", default=None, help="a routing example prompt (repeatable)")
    http(add, "LORAPLEX_ADMIN_KEY")
    rm = asub.add_parser("remove", help="remove a run-time registered adapter")
    rm.add_argument("name")
    http(rm, "LORAPLEX_ADMIN_KEY")

    sub.add_parser(
        "train-router", help="train the MoE router (`loraplex train-router --help` for its options)", add_help=False
    )
    return p


def check_config(path: Path) -> list[str]:
    """Every problem of the loraplex apps in a Serve YAML, validated exactly as `build_app` validates them."""
    import yaml
    from pydantic import ValidationError

    from loraplex.config.app import AppArgs

    if not path.is_file():
        return [f"{path}: no such file"]
    doc = yaml.safe_load(path.read_text()) or {}
    apps = [a for a in doc.get("applications", []) if a.get("import_path") == APP_IMPORT]
    if not apps:
        return [f"{path}: no application with import_path {APP_IMPORT}"]
    problems = []
    for app in apps:
        try:
            AppArgs(**(app.get("args") or {}))
        except ValidationError as e:
            for err in e.errors():
                where = ".".join(str(p) for p in err["loc"])
                problems.append(f"{path}: applications[{app.get('name')}].args.{where}: {err['msg']}")
    return problems


def _request(method: str, a: argparse.Namespace, path: str, body: dict | None = None) -> int:
    import httpx

    key = os.environ.get(a.key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(method, f"{a.url.rstrip('/')}{path}", json=body, headers=headers, timeout=120)
    except httpx.HTTPError as e:
        print(f"error: cannot reach {a.url}: {e}", file=sys.stderr)
        return 2
    try:
        out = r.json()
    except ValueError:
        out = r.text
    text = json.dumps(out, indent=2) if not isinstance(out, str) else out
    print(text, file=sys.stdout if r.status_code < 400 else sys.stderr)
    return 0 if r.status_code < 400 else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train-router":
        from loraplex.cli.train_router import main as train

        return train(argv[1:], prog="loraplex train-router")
    a = _parser().parse_args(argv)
    if a.command == "serve":
        problems = check_config(Path(a.config))
        if problems:
            print("\n".join(["invalid config:", *problems]), file=sys.stderr)
            return 1
        if a.check:
            print(f"{a.config}: ok")
            return 0
        serve = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
        if serve is None:
            print("error: Ray Serve's `serve` command is not installed (pip install 'ray[serve]')", file=sys.stderr)
            return 2
        os.execv(serve, [serve, "run", a.config])
    if a.command == "route":
        return _request("POST", a, "/v1/route", {"prompt": a.prompt, "model": a.model})
    if a.action == "list":
        return _request("GET", a, "/v1/models")
    if a.action == "add":
        body = {"name": a.name, "source": a.source}
        if a.example:
            body["routing_examples"] = a.example
        return _request("POST", a, "/v1/adapters", body)
    return _request("DELETE", a, f"/v1/adapters/{a.name}")


if __name__ == "__main__":
    sys.exit(main())
