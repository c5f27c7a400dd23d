"""The "cpu" scan kernels' sizes: channels per block, time steps per chunk and tile, checkpoint spacing."""

# Channels per block. The lane loops take the width as a run-time argument on purpose: with a constant
# trip count LLVM unrolls them fully and then cannot vectorise them (the SLP vectoriser has no run-time
# alias checks); as ordinary loops the loop vectoriser handles them, and 32 lanes fill its vector body.
LANES = 32
CHUNK = 16  # time steps per chunk: the unit of work, small enough for the buffers to stay in cache
TILE = 16  # chunk loads/stores move (TILE lanes x TILE steps) tiles with vector shuffles: one zmm per row
assert CHUNK == TILE and LANES % TILE == 0
# The forward keeps the state every CKPT_EVERY chunks (64 steps) for the backward, which works on the
# SEGMENT steps between two checkpoints at a time: 64 steps measured best or within noise of it, and the
# checkpoints are then N/64 the size of the output.
CKPT_EVERY = 4
SEGMENT = CHUNK * CKPT_EVERY
# Chunk loads prefetch the same rows this many steps ahead (the backward, which walks back in time: behind):
# a block's rows are one stream per channel and input, more than the hardware prefetcher follows.
PREFETCH_AHEAD = 4 * CHUNK
