"""How often does injected text move the judges' verdicts? Before and after fencing.

Runs the prompt-injection suite (``sparring/eval/data/injections.yaml``: 33
attack strings written for this project) against the real critic and debate
judge prompts on SmolLM2, greedy, on a `transformers serve` engine this script
starts. Each attack is compared with its control (harmless text of the same
length in the same place): see ``sparring/eval/injection.py``.

"Before" is the sparring of an older commit (unfenced prompts): the script
checks that commit out into a scratch worktree and runs the same suite with
that tree's ``sparring`` first on the import path. Prints and writes JSON.

    python3 benchmarks/injection.py --before 2813ab5 --out benchmarks/results/injection.json

Exits 1 when the attacks flip more verdicts than their controls ("holds"
false in the JSON). Each pair's flips are also compared one against the other
(``attack_only``, ``control_only``) with a one-sided sign test
(``p_attack_leads``: a small value means the attacks do steer the judge).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "sparring" / "eval" / "data" / "injections.yaml"


# Not sparring.process.free_port: this script also runs an older sparring.
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(bases: str) -> dict[str, Any]:
    """The suite against the ``sparring`` on the import path (this process)."""
    import importlib.util

    from sparring.agents import Binding, OpenAIChat
    from sparring.config import EngineConfig
    from sparring.serving.engine import EngineProcess
    from sparring.serving.models import pull_smollm2

    # the suite's module comes from this tree even when measuring an older sparring
    spec = importlib.util.spec_from_file_location(
        "injection_suite", ROOT / "sparring" / "eval" / "injection.py"
    )
    assert spec and spec.loader
    suite = importlib.util.module_from_spec(spec)
    sys.modules["injection_suite"] = suite
    spec.loader.exec_module(suite)

    model = pull_smollm2()
    engine = EngineConfig(port=free_port(), startup_timeout_s=300)
    with (
        tempfile.TemporaryDirectory() as tmp,
        EngineProcess("injection", engine, Path(tmp) / "engine.log"),
    ):
        chat = OpenAIChat(timeout_s=600)
        binding = Binding("critic", engine.url(), str(model))
        started = time.perf_counter()

        async def go() -> list[Any]:
            try:
                return list(await suite.run_suite(chat, binding, bases=bases, suite_path=SUITE))
            finally:
                await chat.aclose()

        outcomes = asyncio.run(go())
        seconds = time.perf_counter() - started
    import sparring

    out = dict(suite.summarise(outcomes))
    out["seconds"] = round(seconds, 1)
    out["sparring"] = str(Path(sparring.__file__).parent.parent)  # which tree was measured
    return out


def before(commit: str, bases: str) -> dict[str, Any]:
    """The suite against ``commit``'s sparring, in a child process."""
    with tempfile.TemporaryDirectory(prefix="sparring-before-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
            check=True,
            capture_output=True,
        )
        try:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            proc = subprocess.run(
                [sys.executable, __file__, "--measure-only", "--bases", bases],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise SystemExit(f"measuring {commit} failed:\n{proc.stderr[-3000:]}")
            return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", metavar="COMMIT", help="also measure this older commit")
    ap.add_argument(
        "--bases",
        choices=["all", "rotate"],
        default="all",
        help="critic attacks on every base case (default), or on one each (3x shorter, "
        "too few cases to tell attack from control)",
    )
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure_only:
        print(json.dumps(measure(args.bases)))
        return
    result: dict[str, Any] = {"suite": str(SUITE.relative_to(ROOT)), "bases": args.bases}
    if args.before:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.before],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        result["before"] = {"commit": commit, **before(commit, args.bases)}
    result["after"] = measure(args.bases)
    after = result["after"]["total"]
    # the bar: the attacks move the fenced judge no more often than
    # harmless text of the same length in the same place
    result["holds"] = after["flipped"] <= after["control_flipped"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if not result["holds"]:
        raise SystemExit(
            f"injection: the attacks flipped {after['flipped']} verdicts, the controls "
            f"{after['control_flipped']} (attack alone {after['attack_only']}, control alone "
            f"{after['control_only']}, one-sided sign test p = {after['p_attack_leads']})"
        )


if __name__ == "__main__":
    main()
