from __future__ import annotations

import pytest

from medssm.engine.distributed import DistInfo, ShardedBatchSampler, shard_indices


def test_ranks_split_each_global_batch_of_the_single_process_order():
    single = list(ShardedBatchSampler(50, 8, DistInfo(), seed=3))
    ranks = [list(ShardedBatchSampler(50, 8, DistInfo(r, 2), seed=3)) for r in range(2)]
    assert len(single) == 50 // 8
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
        assert len(ranks[0][step]) == len(ranks[1][step]) == 4


def test_epochs_reshuffle_and_resume_skips_consumed_batches():
    sampler = ShardedBatchSampler(40, 4, DistInfo(), seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(40))
    sampler.set_epoch(1, start_batch=3)
    assert list(sampler) == second[3:] and len(sampler) == 7


def test_errors_and_eval_shards():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        ShardedBatchSampler(10, 3, DistInfo(0, 2), seed=0)
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        ShardedBatchSampler(3, 4, DistInfo(), seed=0)
    assert shard_indices(5, DistInfo(1, 2)) == [1, 3] and shard_indices(5, DistInfo(0, 2)) == [0, 2, 4]


def test_cleanup_frees_the_ddp_wrapper_before_leaving_the_process_group(tmp_path, monkeypatch):
    # A DDP wrapper lives in a reference cycle; if it still holds the gloo group when the group is destroyed,
    # its later collection at interpreter exit can abort the process (seen in CI with torchrun, 2 ranks).
    import gc

    import torch
    import torch.distributed as dist

    from medssm.engine.distributed import cleanup_distributed

    def make_and_train_wrapper() -> None:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
        model(torch.randn(4, 3)).sum().backward()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    gc.disable()  # keep the cycle collector from running on its own between the two calls
    try:
        make_and_train_wrapper()
        live_at_destroy = []
        destroy = dist.destroy_process_group

        def recording_destroy(*args, **kwargs):
            ddp = torch.nn.parallel.DistributedDataParallel
            live_at_destroy.append(sum(type(o) is ddp for o in gc.get_objects()))
            destroy(*args, **kwargs)

        monkeypatch.setattr(dist, "destroy_process_group", recording_destroy)
        cleanup_distributed()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
    assert live_at_destroy == [0]
    assert not dist.is_initialized()
