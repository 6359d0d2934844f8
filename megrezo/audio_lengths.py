"""Frame counts of the audio encoder, in one place for the processor (span lengths) and the batch checks.

Works on ints and on integer tensors alike.
"""


def conv_frames(mel_frames):
    """T1: frames after the stride-2 convolution for a number of mel frames."""
    return (mel_frames - 1) // 2 + 1


def pooled_frames(t1):
    """T2: frames after the 2x average pool for T1 frames."""
    return (t1 - 2) // 2 + 1
