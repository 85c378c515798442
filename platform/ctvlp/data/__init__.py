"""ctvlp.data: shard sample decode, train-time crop/flip, and collate into the batch contract."""

from ctvlp.data.augment import intact_anatomies, intact_in_window, random_crop, random_flip, train_augment
from ctvlp.data.codec import CODECS, decode_sample, decode_volume, encode_volume
from ctvlp.data.collate import collate

__all__ = [
    "CODECS", "collate", "decode_sample", "decode_volume", "encode_volume", "intact_anatomies", "intact_in_window",
    "random_crop", "random_flip", "train_augment",
]
