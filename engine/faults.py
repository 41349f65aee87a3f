"""Test-only fault injection into a running engine, OFF unless LLM_FAULT_INJECTION asks for it.

"fail_engine_after_steps=<N>" makes the engine's step raise (a fatal engine error, as a lost GPU
would) after N steps. Used by tests/reliability/test_faults.py, in the Python backend's process or
in the engine's own process (engine/remote.py) alike. The request-level faults of that variable are
handled by the Triton adapter (model_repository/llm/1/model.py).
"""
from __future__ import annotations


def inject_engine_fault(engine, spec: str) -> None:
    faults = dict(item.split("=", 1) for item in spec.split(";") if "=" in item)
    if "fail_engine_after_steps" not in faults:
        return
    steps = int(faults["fail_engine_after_steps"])
    real_step, done = engine.step, [0]

    def step():
        done[0] += 1
        if done[0] > steps:
            raise RuntimeError(f"injected engine fault after {steps} steps (LLM_FAULT_INJECTION)")
        return real_step()
    engine.step = step
