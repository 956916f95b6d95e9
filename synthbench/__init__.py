"""Synthetic text-to-video retrieval benchmark for TS2-Net.

Procedurally rendered MP4 clips of simple shapes that move, grow, shrink,
rotate or blink over textured backgrounds, with captions that name every
object's size, colour, shape and motion.  Retrieval on it is only solvable
by a model that sees motion (token shift) and small objects (token
selection), and its hard test subsets ("motion" and "small_object" pairs)
isolate each ability.  The package depends on numpy/av/pillow/tqdm only,
never on torch, ``ts2net``, ``export`` or ``cli`` (tests/test_architecture.py checks it).

Entry points: :func:`generate_dataset`, :func:`load_annotations` and the CLI
``ts2net synthbench`` (cli/synthbench.py).
"""
from .generate import GENERATOR_VERSION, Annotations, encode_clip, generate_dataset, load_annotations
from .scene import GenParams, SceneSpec

__all__ = [
    "GENERATOR_VERSION", "Annotations", "GenParams", "SceneSpec",
    "encode_clip", "generate_dataset", "load_annotations",
]
