"""Register-block sizes of the micro-kernels: the one table the kernels are generated from.

Read by setup.py, never imported at run time.  For each instruction-set level, the largest block
each micro-kernel family handles in one call (the drivers split a layer into blocks of at most
this many, as even as possible):

``conv_channels``
    ``conv5x5_pool2_broadcast``: output channels per call; 4 accumulators per channel (the 2x2
    pooling window), so 4 x 6 = 24 of AVX-512's 32 registers.
``conv_channel_vectors``
    ``conv5x5_pool2_channels_in_lanes``: vectors of VLEN output channels per call, for two pooled
    windows at once (4 x 2 x vectors accumulators).
``dense_outputs``
    ``dense_broadcast``: outputs per call, one accumulator each.
``dense_output_vectors``
    ``dense_outputs_in_lanes``: vectors of VLEN outputs per call.

setup.py renders ``block_sizes.h`` (one ``#define`` per family and level) and passes ``BLOCKS``
to the ``*.tp`` templates, which generate one micro-kernel per block size from 1 to the largest
of any level; the template also emits a compile-time check that every level's maximum has a
micro-kernel, so a block size no branch handles fails the build instead of leaving outputs
unwritten.
"""

BLOCKS = {
    #           conv_channels  conv_channel_vectors  dense_outputs  dense_output_vectors
    "avx512": {"conv_channels": 6, "conv_channel_vectors": 2, "dense_outputs": 24,
               "dense_output_vectors": 8},
    "avx2": {"conv_channels": 3, "conv_channel_vectors": 1, "dense_outputs": 12,
             "dense_output_vectors": 8},
    "generic": {"conv_channels": 2, "conv_channel_vectors": 1, "dense_outputs": 8,
                "dense_output_vectors": 4},
}

FAMILIES = ("conv_channels", "conv_channel_vectors", "dense_outputs", "dense_output_vectors")


def largest(family):
    """The largest block of `family` any level uses: the templates generate 1 .. this."""
    return max(level[family] for level in BLOCKS.values())
