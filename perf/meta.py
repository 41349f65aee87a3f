"""What every result file records about its run."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """The commit measured. Device runs set GIT_COMMIT: the tree copied there has no git history."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def add_threads_arg(ap) -> None:
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default on CPU: 1; several threads on a busy machine are far slower)")


def apply_threads(args) -> None:
    """--threads, or 1 thread when running on the CPU (needs args.device)."""
    if args.threads or not args.device.startswith("cuda"):
        import torch
        torch.set_num_threads(args.threads or 1)
