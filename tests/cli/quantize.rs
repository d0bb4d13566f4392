//! `qtier quantize` on the test model and on synthetic checkpoints.
