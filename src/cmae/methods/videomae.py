"""VideoMAE (Tong et al. 2022): MAE on tubelet tokens with tube masking at a 90 % ratio.

Tube masking hides the same spatial places in every frame, so a masked patch cannot be
copied from its neighbour in time; the high ratio fits video's temporal redundancy.
"""

from __future__ import annotations

from cmae.methods.mae import MAE


class VideoMAE(MAE):
    name = "videomae"
    default_masking = "tube"
