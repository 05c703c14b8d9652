"""bench.vae_linear_bound: blocks cut and reassembled exactly; PCA error falls with k, exact at full rank."""

import numpy as np

from bench.vae_linear_bound import from_blocks, main, to_blocks
from videodit.mp4 import write_mp4


def test_blocks_round_trip_with_the_first_frame_replicated():
    clip = np.random.default_rng(0).random((9, 16, 24, 3), dtype=np.float32)
    blocks = to_blocks(clip, 4, 8)
    assert blocks.shape == (3 * 2 * 3, 4 * 8 * 8 * 3)
    first = blocks[0].reshape(4, 8, 8, 3)
    assert np.array_equal(first[0], first[3]) and np.array_equal(first[3], clip[0, :8, :8])
    assert np.array_equal(from_blocks(blocks, clip.shape, 4, 8), clip)


def test_pca_psnr_rises_with_components_and_is_near_exact_at_full_rank(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        frames = (rng.random((5, 16, 16, 3)) * 255).astype(np.uint8)
        write_mp4(tmp_path / f"{i}.mp4", frames, fps=8)
        (tmp_path / f"{i}.txt").write_text("noise")
    lines = main(["--fit", str(tmp_path), "--clips", str(tmp_path), "--vae", "", "--components", "1", "8",
                  "2000"])
    psnrs = [line["psnr_db"] for line in lines]
    assert psnrs[0] < psnrs[1] < psnrs[2] and psnrs[2] > 60  # 2000 >= the 24 fitted blocks: exact
