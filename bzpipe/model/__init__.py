"""The UNet3+ inpainting model and its MC-dropout inference."""

from bzpipe.model.mc_dropout import mc_dropout_mode, mc_predict
from bzpipe.model.unet3plus import UNet3Plus, UNet3PlusConfig

__all__ = ["UNet3Plus", "UNet3PlusConfig", "mc_dropout_mode", "mc_predict"]
