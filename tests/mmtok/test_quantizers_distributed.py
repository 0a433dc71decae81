"""Two CPU processes (gloo): EMA statistics, k-means init, dead-code restarts and quantizer dropout stay in sync."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmtok.quantizers import ResidualVQ, VectorQuantizer

# Each rank sees only its own clusters: rank 0 the right/top ones, rank 1 the left/bottom ones.
CENTERS = {0: torch.tensor([[6.0, 0.0], [0.0, 6.0]]), 1: torch.tensor([[-6.0, 0.0], [0.0, -6.0]])}


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(100 + rank)  # different RNG per rank: agreement must come from the collectives
    try:
        rvq = ResidualVQ(dim=2, num_quantizers=3, codebook_size=4, kmeans_init=True, decay=0.8,
                         threshold_ema_dead_code=1.0, quantize_dropout=True).train()
        # random (per-rank) initial codebook: the first update must start every rank from rank 0's
        vq = VectorQuantizer(dim=2, codebook_size=4, decay=0.8, kmeans_init=False).train()
        used = []
        for _ in range(12):
            data = CENTERS[rank][torch.randint(0, 2, (128,))] + 0.1 * torch.randn(128, 2)
            out = rvq(data)
            used.append(int((out.indices >= 0).all(dim=0).sum()))
            vq(data)
        torch.save({"rvq": rvq.state_dict(), "vq": vq.state_dict(), "used": used},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_codebooks_stay_identical(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0["used"] == r1["used"]                       # same number of dropout stages every step
    assert len(set(r0["used"])) > 1
    for name in ("rvq", "vq"):
        assert r0[name].keys() == r1[name].keys()
        for key in r0[name]:
            assert torch.equal(r0[name][key], r1[name][key]), f"{name}.{key} differs between ranks"
    # k-means and the EMA saw to the union of the ranks' data: every cluster of both ranks has a code near it
    all_centers = torch.cat([CENTERS[0], CENTERS[1]])
    nearest = torch.cdist(all_centers, r0["rvq"]["layers.0.embed"]).min(dim=1).values
    assert (nearest < 1.0).all(), nearest
