"""The keys of a batch: the contract between the sources of batches (the records pipeline, the
synthetic batches, the export's preprocessing) and the models, written once here.

| key | what |
|---|---|
| `image` | uint8 crops [B, c, c, 3]; [B, 10, c, c, 3] for the paper's 10 crops |
| `crop_offset` | int32 (y, x) of each crop in its record image: [B, 2] (or [B, 10, 2]) |
| `flip` | bool, whether the crop was mirrored: [B] (or [B, 10]) |
| `label` | int32 class [B] |
| `mask` | bool [B], evaluation only: False on the padding that evens out the pipelines |

The models read the first three (their mean-image window follows each crop's offset and flip);
the steps read the label and the mask. Every source builds its elements with `make`.
"""

IMAGE, CROP_OFFSET, FLIP, LABEL, MASK = "image", "crop_offset", "flip", "label", "mask"
MODEL_INPUTS = (IMAGE, CROP_OFFSET, FLIP)


def make_inputs(image, crop_offset, flip):
    """What a model takes: the crops with their offsets and flips."""
    return {IMAGE: image, CROP_OFFSET: crop_offset, FLIP: flip}


def make(image, crop_offset, flip, label, mask=None):
    """An element (or a batch) for training, or for evaluation when it has a mask."""
    element = {**make_inputs(image, crop_offset, flip), LABEL: label}
    if mask is not None:
        element[MASK] = mask
    return element


def inputs_of(batch):
    """The model's inputs out of a batch."""
    return {key: batch[key] for key in MODEL_INPUTS}
