"""Helpers shared by the policy families (pi05, openvla_oft): image preprocessing, normalisers,
the SentencePiece tokenizer wrapper and safetensors reading.  Nothing here imports torch, so the
online runtime can use all of it."""
