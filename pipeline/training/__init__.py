"""PyTorch training: architectures and checkpoints, teachers from files, class maps, KD losses, the training loop,
QAT-KD, pruning operations and torchrun/DDP helpers."""
