"""``openai-runtime``: the one command, with a subcommand per job.

Subcommands import their modules lazily so that each process loads only what
its job needs (the sidecar must never pay for the operator's kopf and
kubernetes imports).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]


def _fake_upstream(argv: Sequence[str]) -> int:
    from .fakes.upstream import main as fake_main

    return fake_main(list(argv))


def _chat(argv: Sequence[str]) -> int:
    from .tools import chat_main

    return chat_main(argv)


def _pricing(argv: Sequence[str]) -> int:
    from .tools import pricing_main

    return pricing_main(argv)


def _sidecar(argv: Sequence[str]) -> int:
    from .app import main as sidecar_main

    return sidecar_main(argv)


# The `openai-runtime[operator]` extra: what the operator imports beyond the
# sidecar's install (the sidecar image leaves them out). pydantic models the
# runtime's status; the sidecar's config models are its own (runner/modeling.py).
OPERATOR_EXTRA = ("kopf", "kubernetes", "cryptography", "pydantic", "tzdata")
OPERATOR_INSTALL = "pip install 'openai-runtime[operator]'"


def _missing(names: Sequence[str]) -> list[str]:
    # Checked up front: cryptography is imported only once the webhook starts,
    # which would otherwise fail late with a traceback.
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _with_extra(
    command: str, needs: Sequence[str], load: Callable[[], Callable[[Sequence[str]], int]]
) -> Callable[[Sequence[str]], int]:
    """A subcommand of the operator's package: says how to install what it lacks."""

    def run(argv: Sequence[str]) -> int:
        missing = _missing(needs)
        if not missing:
            try:
                entry = load()
            except ModuleNotFoundError as exc:
                root = (exc.name or "").partition(".")[0]
                if root not in OPERATOR_EXTRA:
                    raise
                missing = [root]
            else:
                return entry(argv)
        print(
            f"openai-runtime {command}: {', '.join(missing)} not installed;"
            f" the operator is an optional extra: {OPERATOR_INSTALL}",
            file=sys.stderr,
        )
        return 2

    return run


def _load_operator() -> Callable[[Sequence[str]], int]:
    # kopf and the operator load only here: the sidecar never pays for them.
    from openai_runtime_operator.main import main as operator_main

    return operator_main


def _load_crd() -> Callable[[Sequence[str]], int]:
    # kopf-free: the CRD is generated from the models (the status's are pydantic).
    from openai_runtime_operator.crd import main as crd_main

    return crd_main


_operator = _with_extra("operator", OPERATOR_EXTRA, _load_operator)
_crd = _with_extra("crd", ("pydantic",), _load_crd)


def _demo(argv: Sequence[str]) -> int:
    from .fakes.demo import main as demo_main

    return demo_main(argv)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "sidecar": (_sidecar, "serve the OpenAI-compatible API and the admin endpoints"),
    "demo": (_demo, "run the local demo: a fake upstream, the runner, a rotation"),
    "chat": (_chat, "send one chat completion through the runner with a config file"),
    "pricing": (_pricing, "show the built-in price table or the cost of a usage"),
    "fake-upstream": (_fake_upstream, "serve a deterministic OpenAI/Azure-shaped upstream"),
    "crd": (_crd, "print the OpenAiRuntime CustomResourceDefinition (YAML)"),
    "operator": (_operator, "run the Kubernetes operator (kopf): runtimes, Secrets, rotation"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="openai-runtime",
        description="OpenAI and Azure OpenAI traffic from Kubernetes, with rotation and cost.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to run")
    help_lines = "\n".join(f"  {name:14} {text}" for name, (_, text) in sorted(COMMANDS.items()))
    parser.epilog = "commands:\n" + help_lines
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    if args[0] not in COMMANDS:
        parser.parse_args(args[:1])  # prints the usage error and exits 2
    handler, _ = COMMANDS[args[0]]
    return handler(args[1:])


if __name__ == "__main__":
    sys.exit(main())
