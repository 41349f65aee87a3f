"""ModelRunner.prepare packs a step's inputs; the block tables come from per-sequence numpy copies
that must follow every change of a sequence's table (growth, and a new table of the same length
after preemption and re-admission)."""
from __future__ import annotations

from engine import SamplingParams
from engine.scheduler import ScheduledBatch


def packed_tables(runner, batch):
    packed, width, *_ = runner.prepare(batch, None)
    rows = packed[packed.numel() - len(batch.seqs) * width:].view(len(batch.seqs), width)
    return [row[:len(s.block_table)].tolist() for row, s in zip(rows, batch.seqs)], rows


def test_prepare_packs_each_sequence_s_current_block_table(engine_factory, gqa):
    eng = engine_factory(gqa, async_scheduling=False)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    a = eng.add_request("a", list(range(5, 45)), params)    # 40 tokens: 3 blocks of 16
    b = eng.add_request("b", list(range(7, 12)), params)    # 5 tokens: 1 block
    eng.step()
    batch = ScheduledBatch([a, b], [1, 1])
    tables, rows = packed_tables(eng.runner, batch)
    assert tables == [a.block_table, b.block_table]
    assert rows[1, len(b.block_table):].tolist() == [0] * (rows.shape[1] - len(b.block_table))

    b.block_table.append(a.block_table[0])                 # grown (a fake block, packing only)
    assert packed_tables(eng.runner, ScheduledBatch([a, b], [1, 1]))[0] == [a.block_table, b.block_table]

    original = a.block_table
    a.block_table = list(reversed(original))               # replaced, same length
    assert packed_tables(eng.runner, ScheduledBatch([a, b], [1, 1]))[0] == [a.block_table, b.block_table]
    a.block_table = original
    b.block_table.pop()
    b.block_table_array = None
    while eng.has_unfinished():
        eng.step()


def test_make_current_sets_the_device_of_the_calling_thread(monkeypatch):
    """CUDA's current device is per thread (a new thread starts on 0): an engine on cuda:1 stepped
    from its loop's thread must make cuda:1 current there first (LLMEngine.step calls this)."""
    import torch

    from engine.model_runner import make_current
    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    make_current(torch.device("cuda", 1))
    make_current(torch.device("cuda", 0))   # already current: nothing to do
    make_current(torch.device("cpu"))
    assert calls == [torch.device("cuda", 1)]


def test_engine_steps_make_its_device_current(engine_factory, gqa, monkeypatch):
    import engine.engine as engine_module
    seen = []
    monkeypatch.setattr(engine_module, "make_current", lambda device: seen.append(device))
    eng = engine_factory(gqa)
    eng.generate(["hello"], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert seen and all(d == eng.runner.device for d in seen)


def test_prepare_marks_in_flight_tokens_and_carries_width_and_host_address(engine_factory, gqa):
    """The step_shapes head: a decode whose last token is still on the device gets that token's
    row of the previous step's sampled tokens in fill_src (and a placeholder in input_ids), the
    others -1; table_width and greedy_host_addr ride after it; padding sequences fill nothing."""
    import torch

    from engine.step_shapes import StepShape
    eng = engine_factory(gqa, async_scheduling=False)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    a = eng.add_request("a", list(range(5, 45)), params)    # 40 tokens: 3 blocks of 16
    b = eng.add_request("b", list(range(7, 12)), params)    # 5 tokens: 1 block
    eng.step()
    a.num_pending, a.pending_row = 1, 3                     # as if a's next token were in flight
    a.num_computed_tokens = len(a.token_ids)
    shape = StepShape(4, 4, True)
    prev = torch.zeros(4, dtype=torch.long)
    packed, width, num_sampling, fills = eng.runner.prepare(ScheduledBatch([a, b], [1, 1]), shape, prev)
    v = {name: packed[sl].tolist() for name, sl in shape.head_slices().items()}
    assert fills and num_sampling == 2 and width == len(a.block_table)
    assert v["fill_src"] == [3, -1, -1, -1]
    assert v["input_ids"][0] == 0 and v["input_ids"][1] == b.token_ids[b.num_computed_tokens]
    assert v["table_width"] == [width] and v["greedy_host_addr"] == [0]
    host = torch.zeros(8, dtype=torch.float64)
    packed, *_, fills = eng.runner.prepare(ScheduledBatch([b], [1]), shape, None, host)
    assert not fills and packed[shape.head_slices()["greedy_host_addr"]].tolist() == [host.data_ptr()]
    a.num_pending, a.pending_row = 0, -1
    a.num_computed_tokens = len(a.token_ids) - 1
    while eng.has_unfinished():
        eng.step()
