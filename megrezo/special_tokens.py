"""Token strings of the release, by role. Ids always come from the checkpoint's tokenizer, never from here.

Released ids for reference: <|eos|> 120000, <|unk|> 120001, <|pad|> 120002, <|role_start|> 120003,
<|role_end|> 120004, <|turn_end|> 120005 (the config's eos), 120006-120010 code/commit/diff markers.
"""

EOS = "<|eos|>"
UNK = "<|unk|>"
PAD = "<|pad|>"
ROLE_START = "<|role_start|>"
ROLE_END = "<|role_end|>"
TURN_END = "<|turn_end|>"
# The names of ids 120006-120010 were not recovered; these stand in for them in tokenizers the project creates.
CODE_MARKERS = ["<|code_start|>", "<|code_end|>", "<|commit_start|>", "<|commit_end|>", "<|diff|>"]

IMAGE_START = "<|image_start|>"
IMAGE_END = "<|image_end|>"
IMAGE_ID_START = "<|image_id_start|>"
IMAGE_ID_END = "<|image_id_end|>"
SLICE_START = "<|slice_start|>"
SLICE_END = "<|slice_end|>"
# [choice] The release's audio start/end strings were not recovered; MegrezOConfig.audio_start_token and
# audio_end_token override these for a checkpoint that names them differently.
AUDIO_START = "<|audio_start|>"
AUDIO_END = "<|audio_end|>"

# In release id order first, so a tokenizer built from this list keeps the release's relative order.
ALL_SPECIAL = [EOS, UNK, PAD, ROLE_START, ROLE_END, TURN_END, *CODE_MARKERS]
MEDIA_TOKENS = [IMAGE_START, IMAGE_END, IMAGE_ID_START, IMAGE_ID_END, SLICE_START, SLICE_END, AUDIO_START, AUDIO_END]
