"""TS2-Net in PyTorch: the reference model that ts2net-deploy exports.

    import ts2net
    model = ts2net.load_model("pytorch_model.bin.4")        # official checkpoint, eval mode
    text = model.encode_text(input_ids)                     # [B, D]
    frames, idx = model.encode_video(frames, frame_mask)    # [B, T, D], [B, T, K]
    sim = model.similarity(text, frames, frame_mask)        # [Nt, Nv], logit-scaled
"""
from .checkpoint import CheckpointError, load_model, save_model
from .config import TS2NetConfig
from .model import TS2Net, contrastive_loss

__all__ = ["CheckpointError", "TS2Net", "TS2NetConfig", "contrastive_loss", "load_model", "save_model"]
