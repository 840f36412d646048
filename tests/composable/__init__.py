"""Tests of torchgraft.composable."""
