import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mssl.models.queue import KeyQueue


def test_fifo_overwrites_the_oldest_keys_and_counts_valid_entries():
    queue = KeyQueue(size=5, dim=2)
    assert queue.valid().shape == (0, 2)
    queue.enqueue(torch.arange(6.0).reshape(3, 2))
    assert torch.equal(queue.valid(), torch.arange(6.0).reshape(3, 2))
    queue.enqueue(torch.arange(6.0, 12.0).reshape(3, 2))  # wraps: slots 3, 4, 0
    assert int(queue.filled) == 5 and int(queue.pointer) == 1
    assert torch.equal(queue.keys[0], torch.tensor([10.0, 11.0]))
    assert torch.equal(queue.keys[1], torch.tensor([2.0, 3.0]))


def test_queue_state_is_checkpointed():
    queue = KeyQueue(size=4, dim=3)
    queue.enqueue(torch.ones(2, 3))
    restored = KeyQueue(size=4, dim=3)
    restored.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"keys", "pointer", "filled"}
    assert torch.equal(restored.valid(), torch.ones(2, 3))


def _enqueue_on_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        queue = KeyQueue(size=8, dim=2)
        for step in range(2):
            queue.enqueue(torch.full((2, 2), float(10 * step + rank)))  # 2 keys per rank and step
        torch.save(queue.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_enqueue_the_union_of_keys_in_the_same_order(tmp_path):
    mp.spawn(_enqueue_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    expected = torch.tensor([0.0, 0, 1, 1, 10, 10, 11, 11])[:, None].expand(-1, 2)
    for state in states:
        assert torch.equal(state["keys"], expected)
        assert int(state["filled"]) == 8
