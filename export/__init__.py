"""cvahash.export: the workstation toolchain (training, evaluation, ONNX export).

Heavy dependencies (torch, transformers, peft, onnx) are imported by the submodules
that need them, never here, so ``import cvahash.export`` is cheap and
``cvahash.export.synth.corpus`` works with numpy alone.
"""
