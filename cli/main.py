"""The `omnibatch` command (docs/api.md §2): argument parsing, then one call into a module."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from contract.schemas import Task


def _run(args: argparse.Namespace) -> int:
    from workers.local_run import request_from_flags, run_files

    request = request_from_flags(
        task=args.task,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        thinking=args.thinking,
        fps=args.fps,
        max_frames=args.max_frames,
        evs_rate=args.evs_rate,
        use_audio=not args.no_audio,
        schema=args.schema,
        json_object=args.json,
    )
    with open(args.out, "w") if args.out else contextlib.nullcontext(sys.stdout) as out:
        failed = run_files(args.paths, request, args.model, args.device, out, args.quantize)
    return 1 if failed else 0


def _serve(args: argparse.Namespace) -> int:
    from cli.serve import serve

    return serve(args.host, args.port, args.workers)


def _gateway(args: argparse.Namespace) -> int:
    from cli.serve import run_gateway

    return run_gateway(args.host, args.port)


def _worker(args: argparse.Namespace) -> int:
    from workers.worker import check_ready, run_worker

    if args.check:
        return check_ready(args.device)
    return run_worker(args.device)


def _webhooks(args: argparse.Namespace) -> int:
    from contract.settings import DeliverySettings
    from service.webhooks import run_delivery_worker

    run_delivery_worker(DeliverySettings())
    return 0


def _submit(args: argparse.Namespace) -> int:
    from cli.client import submit

    return submit(args.path, args.server, args.key, args.request, args.wait)


def _demo_checkpoint(args: argparse.Namespace) -> int:
    from workers.model.demo import write_demo_checkpoint

    write_demo_checkpoint(args.dir, precision=args.precision)
    print(args.dir)
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="process local files in-process (no Redis, no server), all in flight at once",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--task", choices=[t.value for t in Task])
    p.add_argument("--prompt")
    p.add_argument("--model", type=Path, help="checkpoint directory (default: OMNIBATCH_MODEL)")
    p.add_argument("--device", help="cuda:N or cpu (default: cuda:0 when present, else cpu)")
    p.add_argument(
        "--quantize",
        choices=["fp8", "nvfp4"],
        help="quantize a BF16 checkpoint at load (default: OMNIBATCH_QUANTIZE)",
    )
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--fps", type=float)
    p.add_argument("--max-frames", type=int)
    p.add_argument("--evs-rate", type=float, help="default: the checkpoint's video_pruning_rate")
    p.add_argument("--no-audio", action="store_true", help="ignore video soundtracks")
    p.add_argument("--thinking", action="store_true", help="reasoning mode")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument(
        "--schema", type=Path, metavar="FILE", help="answer JSON matching this JSON Schema file"
    )
    fmt.add_argument("--json", action="store_true", help="answer a JSON object")
    p.add_argument("--out", type=Path, help="write the JSON lines here instead of stdout")
    p.set_defaults(func=_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnibatch", description="Batch media processing with Nemotron 3 Nano Omni."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)

    p = sub.add_parser("serve", help="gateway + worker(s) + webhook delivery in one command")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (one per GPU)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("gateway", help="the REST gateway")
    p.add_argument("--host", help="default: OMNIBATCH_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default: OMNIBATCH_PORT or 8000")
    p.set_defaults(func=_gateway)

    p = sub.add_parser("worker", help="a GPU worker (one process per GPU)")
    p.add_argument("--device", help="cuda:N or cpu (default: OMNIBATCH_DEVICE)")
    p.add_argument(
        "--check", action="store_true", help="exit 0 when this host's worker has its model loaded"
    )
    p.set_defaults(func=_worker)

    p = sub.add_parser("webhooks", help="the webhook delivery worker")
    p.set_defaults(func=_webhooks)

    p = sub.add_parser("submit", help="submit a file to a running server")
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("--server", default="http://127.0.0.1:8000")
    p.add_argument("--key", help="API key (default: OMNIBATCH_API_KEY)")
    p.add_argument("--request", help="JSON of the request fields (task, prompt, video, ...)")
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.set_defaults(func=_submit)

    p = sub.add_parser("demo-checkpoint", help="write the tiny random-weight checkpoint")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument(
        "--precision",
        choices=["bf16", "fp8", "nvfp4"],
        default="bf16",
        help="the layout of NVIDIA's BF16, FP8 or NVFP4 checkpoint",
    )
    p.set_defaults(func=_demo_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:  # the gateway's install: the commands import lazily
        raise SystemExit(
            f"omnibatch {args.command}: {exc.name} is not installed; the worker, `run` and "
            "`serve` need the package's `worker` extra (pip install '.[worker]')"
        ) from exc


if __name__ == "__main__":
    sys.exit(main())
