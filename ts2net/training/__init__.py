"""Training TS2-Net (PyTorch): one module per job.

    options      TrainOptions, the starting model and tokenizer
    frame_cache  decode each clip once into a memory-mapped frame cache; datasets and the paired sampler
    tokenizer    the caption BPE trained on a benchmark's train captions
    distributed  gloo DDP: process group and the all-gathers of the contrastive batch
    loss         the objective (symmetric cross-entropy over the batch similarity; the optional pair term)
    optim        AdamW groups and the warm-up + cosine schedule
    validation   retrieval metrics on the validation split during training
    pair_tracking  hard-pair accuracy by change type during training, and run comparisons
    state        the resumable run state (checkpoints/last.pt)
    loop         `run_training`: the epochs, logging, checkpoints and the final model

Command line: `ts2net train` (cli/train.py), `ts2net train-tokenizer` (cli/train_tokenizer.py).
"""
from .loop import run_training
from .options import TrainOptions

__all__ = ["TrainOptions", "run_training"]
