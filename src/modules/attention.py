"""The diffusion UNet's attention implementation: ``model.attention`` = sdpa | xformers | default."""

import importlib.util

from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from src.errors import UserError

ATTENTION = {
    "sdpa": "PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels where available)",
    "xformers": "xformers' memory-efficient attention (pip install xformers; CUDA only)",
    "default": "diffusers' plain attention (the full attention matrix in memory; a reference for debugging)",
}


def check_attention(attention: str | None) -> None:
    """One line, before any model is loaded, for an unknown choice or a missing xformers."""
    if attention is None:
        return
    if attention not in ATTENTION:
        raise UserError(f"model.attention={attention!r}: use one of {', '.join(ATTENTION)}")
    if attention == "xformers" and importlib.util.find_spec("xformers") is None:
        raise UserError("model.attention=xformers needs the xformers package, which is not installed — pip install "
                        "xformers on a CUDA machine, or use model.attention=sdpa (PyTorch's fused attention)")


def set_attention(unet, attention: str) -> None:
    """Give every attention layer of ``unet`` the chosen processor (LoRA layers are unaffected: they wrap
    the projections the processor calls)."""
    check_attention(attention)
    if attention == "xformers":
        try:
            unet.enable_xformers_memory_efficient_attention()
        except (ImportError, ValueError) as err:  # e.g. no CUDA device
            raise UserError(f"model.attention=xformers is unusable here: {str(err).splitlines()[0]} — use "
                            "model.attention=sdpa") from err
    else:
        unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
