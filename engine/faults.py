"""Test-only fault injection, OFF unless the server's environment sets LLM_FAULT_INJECTION, e.g.
"fail_request_with_prompt=<marker>;fail_response_with_prompt=<marker>;fail_engine_after_steps=<N>":
a request whose prompt contains the marker fails while being submitted / while its second response
is built (both in the Triton adapter, model_repository/llm/1/model.py); `slow_submit_with_prompt`
holds the adapter's admission thread for a second between registering a batch with that marker
and submitting it (a wide window for a cancellation to arrive in); the engine's step raises (a
fatal engine error, as a lost GPU would) after N steps, in the Python backend's process or in the
engine's own process (engine/remote.py) alike. `device_fault_after_steps=<N>` makes a real one on a
GPU: an out-of-bounds gather on the engine's device trips a device-side assert, which leaves that
process's CUDA context unusable, as a faulty kernel would (on the CPU the same gather raises
IndexError). `fail_delivery_after_rounds=<N>`: the engine process's send of its (N+1)-th round of
outputs to the stub raises (engine/remote.py). Used by tests/reliability/test_faults.py and
tests/engine/test_remote.py.
"""
from __future__ import annotations

import os

KNOWN = {"fail_request_with_prompt", "fail_response_with_prompt", "slow_submit_with_prompt",
         "fail_engine_after_steps", "device_fault_after_steps", "fail_delivery_after_rounds"}


def parse_faults(spec: str | None = None) -> dict[str, str]:
    """The faults asked for (default: from LLM_FAULT_INJECTION); ValueError for an unknown one."""
    if spec is None:
        spec = os.environ.get("LLM_FAULT_INJECTION", "")
    faults = dict(item.split("=", 1) for item in spec.split(";") if "=" in item)
    unknown = set(faults) - KNOWN
    if unknown:
        raise ValueError(f"LLM_FAULT_INJECTION: unknown fault(s) {sorted(unknown)}")
    return faults


def inject_engine_fault(engine, faults: dict[str, str]) -> None:
    if "fail_engine_after_steps" in faults:
        steps, fault = int(faults["fail_engine_after_steps"]), _raise
    elif "device_fault_after_steps" in faults:
        steps, fault = int(faults["device_fault_after_steps"]), _device_fault
    else:
        return
    real_step, done = engine.step, [0]

    def step():
        done[0] += 1
        if done[0] > steps:
            fault(engine, steps)
        return real_step()
    engine.step = step


def _raise(engine, steps: int) -> None:
    raise RuntimeError(f"injected engine fault after {steps} steps (LLM_FAULT_INJECTION)")


def _device_fault(engine, steps: int) -> None:
    import torch
    device = torch.device(engine.config.device)
    table = torch.zeros(4, device=device)
    table[torch.tensor([1 << 30], device=device)].sum().item()   # .item() syncs: the assert surfaces here
